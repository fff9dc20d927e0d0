/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lab.h — what the lab's own XDP programs (lab_pass.bpf.c, lab_ceiling.bpf.c)
 * know about the lab: its foreign ranges (agent/lab/topology.py, FOREIGN_V4
 * and FOREIGN_V6), where every flood comes from. tests/unit/test_bench_collateral.py
 * keeps these equal to the Python ones.
 */
#ifndef FLOODGUARD_LAB_H
#define FLOODGUARD_LAB_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#ifndef LAB_FOREIGN_NET
#define LAB_FOREIGN_NET 0xC6120000 /* 198.18.0.0 */
#endif
#ifndef LAB_FOREIGN_LEN
#define LAB_FOREIGN_LEN 15
#endif
/* 2001:db8:f::/48: the first three 16-bit groups of an address */
#ifndef LAB_FOREIGN6_0
#define LAB_FOREIGN6_0 0x2001
#endif
#ifndef LAB_FOREIGN6_1
#define LAB_FOREIGN6_1 0x0db8
#endif
#ifndef LAB_FOREIGN6_2
#define LAB_FOREIGN6_2 0x000f
#endif

/* addr in network order */
static __always_inline int lab_foreign4(__u32 addr)
{
	__u32 mask = ~0U << (32 - LAB_FOREIGN_LEN);
	return (__builtin_bswap32(addr) & mask) == LAB_FOREIGN_NET;
}

static __always_inline int lab_foreign6(const struct in6_addr *a)
{
	const __u16 *s = (const __u16 *)a;
	return __builtin_bswap16(s[0]) == LAB_FOREIGN6_0 && __builtin_bswap16(s[1]) == LAB_FOREIGN6_1 &&
	       __builtin_bswap16(s[2]) == LAB_FOREIGN6_2;
}

/* The IPv4 header of an Ethernet frame, or NULL (another protocol, or too short). */
static __always_inline struct iphdr *lab_ipv4(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != __builtin_bswap16(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	return (void *)(ip + 1) > data_end ? 0 : ip;
}

/* The IPv6 header of an Ethernet frame, or NULL. */
static __always_inline struct ipv6hdr *lab_ipv6(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != __builtin_bswap16(ETH_P_IPV6))
		return 0;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	return (void *)(ip6 + 1) > data_end ? 0 : ip6;
}

#endif /* FLOODGUARD_LAB_H */
