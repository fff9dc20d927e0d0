/* SPDX-License-Identifier: GPL-2.0 */
/*
 * prefix_none.bpf.c — the baseline of `floodguard bench prefixes`: the
 * candidates' work without a lookup (rewrite the source, parse, return).
 * A candidate's ns/packet minus this one is what its lookup costs.
 *
 * BCC compiles this file as /virtual/main.c: headers resolve through the
 * loader's -I of bpf/, and map methods are only rewritten in this file.
 */
#include <uapi/linux/bpf.h>

#include "bench.h"
#include "parse.h"

int xdp_none(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct fg_pkt p = {};

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	if (fg_parse(data, data_end, &p) != FG_PARSE_OK || p.family != 4)
		return XDP_ABORTED;
	/* The source is read as the candidates read it, so that it is not
	 * optimised away with the rest of the parse. */
	return p.src[0] ? XDP_PASS : XDP_DROP;
}
