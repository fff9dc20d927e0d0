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
 * The lab's foreign ranges are in lab.h, shared with lab_pass.bpf.c.
 */
#include <uapi/linux/bpf.h>

#include "lab.h"

int xdp_lab_ceiling(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = lab_ipv4(data, data_end);
	if (ip)
		return lab_foreign4(ip->saddr) ? XDP_DROP : XDP_PASS;
	struct ipv6hdr *ip6 = lab_ipv6(data, data_end);
	return ip6 && lab_foreign6(&ip6->saddr) ? XDP_DROP : XDP_PASS;
}
