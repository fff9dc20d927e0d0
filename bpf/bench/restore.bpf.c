/* SPDX-License-Identifier: GPL-2.0 */
/*
 * restore.bpf.c — bench only: gives a program that rewrites its packet a
 * fresh copy of the original frame on every test-run repeat.
 *
 * BPF_PROG_TEST_RUN with repeat N runs the program N times on ONE xdp_buff
 * and does not reset it in between (measured on 6.18: of 1,000 repeats of a
 * SYN under SYN authentication, 1 was challenged and 999 passed — they saw
 * the SYN-ACK the first one had become, 6 bytes shorter). floodguard turns
 * a SYN into its challenge in place (addresses, ports and flags swapped,
 * options cut off with bpf_xdp_adjust_tail), so `floodguard bench
 * datapath` puts this front before it: it sets the frame's length back
 * (adjust_tail, called every time, even with 0, so that the cost is the
 * same whatever the program behind did), copies the original bytes over it
 * and tail-calls slot 0 of `next`.
 *
 * The frame is FG_BENCH_FRAME_LEN bytes (a -D flag, a multiple of 4), in
 * slot 0 of `frame`, written by agent/bench/datapath.py. The program behind
 * is the floodguard bench build, which varies the source itself; the
 * reference is this front before bench_drop.bpf.c built with the same flags.
 */
#include <uapi/linux/bpf.h>

#ifndef FG_BENCH_FRAME_LEN
#define FG_BENCH_FRAME_LEN 60U
#endif

struct fg_bench_frame {
	__u32 w[FG_BENCH_FRAME_LEN / 4];
};

/* Slot 0: the original frame. Written by agent/bench/datapath.py. */
BPF_ARRAY(frame, struct fg_bench_frame, 1);
/* Slot 0: the program under test. Written by agent/bench/datapath.py. */
BPF_PROG_ARRAY(next, 1);

int xdp_restore(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct fg_bench_frame *f = frame.lookup(&zero);

	if (!f)
		return XDP_ABORTED;
	int len = (int)(ctx->data_end - ctx->data);
	if (bpf_xdp_adjust_tail(ctx, (int)FG_BENCH_FRAME_LEN - len))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + FG_BENCH_FRAME_LEN > data_end)
		return XDP_ABORTED;
	/* Word stores: a byte-wise memcpy would cost more than what it restores. */
	__u32 *p = data;
#pragma unroll
	for (int i = 0; i < FG_BENCH_FRAME_LEN / 4; i++)
		p[i] = f->w[i];
	next.call(ctx, 0);
	/* Only reached when slot 0 is empty or the kernel refused the call. */
	return XDP_ABORTED;
}
