/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lab_ceiling.bpf.c — the perfect filter of `floodguard bench collateral`,
 * attached natively to the lab gateway's gw-in by agent/lab/ceiling.py.
 *
 * It knows the answer: every flood of the lab comes from the foreign ranges
 * (198.18.0.0/15, 2001:db8:f::/48; agent/lab/topology.py) and every
 * legitimate client from the domestic ones. It drops every packet whose
 * source is foreign and passes the rest, at the same hook and in the same
 * mode as floodguard, doing the least work a filter can do per packet: no
 * map, no lookup. What the legitimate load gets with it is the most any
 * filter at the gateway can give on this machine, where the flood's
 * generator and the upstream router share the CPUs with the load.
 *
 * LAB_FOREIGN_NET/LAB_FOREIGN_LEN and LAB_FOREIGN6_* default to the lab's
 * ranges; tests/unit/test_bench_collateral.py keeps them equal.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#ifndef LAB_FOREIGN_NET
#define LAB_FOREIGN_NET 0xC6120000 /* 198.18.0.0 */
#endif
#ifndef LAB_FOREIGN_LEN
#define LAB_FOREIGN_LEN 15
#endif
/* 2001:db8:f::/48: the first three 16-bit groups of the source */
#ifndef LAB_FOREIGN6_0
#define LAB_FOREIGN6_0 0x2001
#endif
#ifndef LAB_FOREIGN6_1
#define LAB_FOREIGN6_1 0x0db8
#endif
#ifndef LAB_FOREIGN6_2
#define LAB_FOREIGN6_2 0x000f
#endif

int xdp_lab_ceiling(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == __builtin_bswap16(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		__u32 mask = ~0U << (32 - LAB_FOREIGN_LEN);
		if ((__builtin_bswap32(ip->saddr) & mask) == LAB_FOREIGN_NET)
			return XDP_DROP;
		return XDP_PASS;
	}
	if (eth->h_proto == __builtin_bswap16(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		__u16 *s = (__u16 *)&ip6->saddr;
		if (__builtin_bswap16(s[0]) == LAB_FOREIGN6_0 && __builtin_bswap16(s[1]) == LAB_FOREIGN6_1 &&
		    __builtin_bswap16(s[2]) == LAB_FOREIGN6_2)
			return XDP_DROP;
	}
	return XDP_PASS;
}
