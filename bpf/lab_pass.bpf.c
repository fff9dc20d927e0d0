/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lab_pass.bpf.c — the lab's XDP program for the upstream router's end of the
 * ingress link (up-gw), attached natively by agent/lab/traffic.py.
 *
 * It exists because a veth delivers a frame that its peer bounced with
 * XDP_TX only if it runs an XDP program itself: after XDP_TX,
 * drivers/net/veth.c kicks the receiving end's NAPI only when that end has a
 * program (veth_xdp_flush). Without one, floodguard's SYN-auth challenges
 * from gw-in would sit in up-gw's ring until unrelated traffic happened to
 * flush it (agent/lab/topology.py, "XDP_TX on a veth").
 *
 * It also plays the Internet for packets to the forged foreign addresses of
 * the lab's floods (LAB_FOREIGN_NET/LAB_FOREIGN_LEN, set by the loader): on
 * a real uplink, challenges to spoofed sources leave the box; in the lab the
 * upstream "router" shares the machine's two CPUs, so they are dropped here
 * instead of being routed into a blackhole at 50,000 per second, crowding
 * out the challenges that real clients must receive.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#ifndef LAB_FOREIGN_NET
#define LAB_FOREIGN_NET 0xC6120000U /* 198.18.0.0 */
#endif
#ifndef LAB_FOREIGN_LEN
#define LAB_FOREIGN_LEN 15
#endif

int xdp_lab_pass(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != __builtin_bswap16(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	__u32 mask = ~0U << (32 - LAB_FOREIGN_LEN);
	if ((__builtin_bswap32(ip->daddr) & mask) == LAB_FOREIGN_NET)
		return XDP_DROP;
	return XDP_PASS;
}
