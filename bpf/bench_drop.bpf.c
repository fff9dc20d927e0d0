/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bench_drop.bpf.c — the reference for `floodguard bench datapath`: drop
 * everything. Built with the same -DFG_BENCH flags as the real program so
 * both pay for the same source-address rewrite.
 */
#include <uapi/linux/bpf.h>

#include "bench.h"

int xdp_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	__u32 zero = 0;

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	return XDP_DROP;
}
