/* SPDX-License-Identifier: GPL-2.0 */
/*
 * prefix_hash.bpf.c — candidate (b) of `floodguard bench prefixes`: a hash
 * per prefix length in use, probed longest first.
 *
 * The per-length hashes share one table keyed by (length, prefix): each
 * probe is one hash lookup either way, and one table spares a map-in-map
 * indirection per probe. A hit costs one probe per length longer than the
 * match; a miss costs one probe per length in use, which is what makes this
 * structure slow down as a policy uses more lengths.
 *
 * Every candidate does the same work around its lookup: rewrite the source
 * (bench.h), parse the packet (parse.h), look the IPv4 source up, count a
 * hit, and return XDP_DROP on a hit and XDP_PASS on a miss, so differences
 * in ns/packet are the lookups'. The hit counter lets the bench check that
 * every candidate answered exactly as the prefix set computed in Python.
 * BCC compiles this file as /virtual/main.c: headers resolve through the
 * loader's -I of bpf/, and map methods are only rewritten in this file.
 */
#include <uapi/linux/bpf.h>

#include "bench.h"
#include "parse.h"
#include "bench/prefix.h"

/* (length, prefix) -> 1. Written by agent/bench/prefixes.py. */
BPF_HASH(by_len, struct len_key, __u32, FG_MAX_SRC_ENTRIES);
/* One entry: the lengths in use. Written by agent/bench/prefixes.py. */
BPF_ARRAY(lengths, struct lengths, 1);
/* [0]: packets that matched a prefix. */
BPF_PERCPU_ARRAY(hits, __u64, 1);

int xdp_hash(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 src;

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	if (fg_bench_src4(data, data_end, &src) < 0)
		return XDP_ABORTED;

	struct lengths *l = lengths.lookup(&zero);
	if (!l)
		return XDP_ABORTED;
	__u32 n = l->n;
	for (__u32 i = 0; i < 33; i++) {
		if (i >= n)
			break;
		struct len_key k = { .len = l->len[i], .addr = src & l->mask[i] };
		if (by_len.lookup(&k)) {
			__u64 *h = hits.lookup(&zero);
			if (h)
				(*h)++;
			return XDP_DROP;
		}
	}
	return XDP_PASS;
}
