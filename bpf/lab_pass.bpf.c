/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lab_pass.bpf.c — the lab's XDP_PASS for the upstream router's end of the
 * ingress link (up-gw), attached natively by agent/lab/traffic.py.
 *
 * It changes no packet. It exists because a veth delivers a frame that its
 * peer bounced with XDP_TX only if it runs an XDP program itself: after
 * XDP_TX, drivers/net/veth.c kicks the receiving end's NAPI only when that
 * end has a program (veth_xdp_flush). Without one, floodguard's SYN-auth
 * challenges from gw-in would sit in up-gw's ring until unrelated traffic
 * happened to flush it (agent/lab/topology.py, "XDP_TX on a veth").
 */
#include <uapi/linux/bpf.h>

int xdp_lab_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
