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
 * the lab's floods (lab.h): on a real uplink, challenges to spoofed sources
 * leave the box; in the lab the
 * upstream "router" shares the machine's two CPUs, so they are dropped here
 * instead of being routed into a blackhole at 50,000 per second, crowding
 * out the challenges that real clients must receive.
 */
#include <uapi/linux/bpf.h>

#include "lab.h"

int xdp_lab_pass(struct xdp_md *ctx)
{
	struct iphdr *ip = lab_ipv4((void *)(long)ctx->data, (void *)(long)ctx->data_end);
	return ip && lab_foreign4(ip->daddr) ? XDP_DROP : XDP_PASS;
}
