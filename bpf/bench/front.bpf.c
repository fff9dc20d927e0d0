/* SPDX-License-Identifier: GPL-2.0 */
/*
 * front.bpf.c — bench only: puts a peer program (xdp-filter) on the same
 * packets as floodguard. It rewrites the source address exactly as the
 * floodguard bench build does (bench.h), then tail-calls the program in
 * slot 0 of `next`, so the peer sees the same varying sources.
 *
 * xdp_tail_drop is the trivial tail-call target: front + tail call + drop
 * measures what the front and the tail call cost, so that can be subtracted
 * from the peer's number.
 */
#include <uapi/linux/bpf.h>

/* BCC compiles this file as /virtual/main.c: headers resolve through the
 * loader's -I of bpf/, not relative to bpf/bench/. */
#include "bench.h"

/* Slot 0: the program under test. Written by agent/bench/datapath.py. */
BPF_PROG_ARRAY(next, 1);

int xdp_front(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	next.call(ctx, 0);
	/* Only reached when slot 0 is empty or the kernel refused the call. */
	return XDP_ABORTED;
}

int xdp_tail_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}
