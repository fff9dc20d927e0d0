/* SPDX-License-Identifier: GPL-2.0 */
/*
 * prefix_bloom.bpf.c — candidate (c) of `floodguard bench prefixes`:
 * candidate (b) with a BPF_MAP_TYPE_BLOOM_FILTER checked before each hash
 * probe, so that a miss costs bloom-filter bit tests instead of hash
 * lookups.
 *
 * BCC 0.26 (Debian 12) has no "bloom_filter" table type and refuses this
 * file ("unsupported map type"); the bench reports that and skips the
 * candidate, and measures it as soon as the installed BCC knows the type.
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

/* Every (length, prefix) of by_len, as bloom-filter values. */
BPF_TABLE("bloom_filter", int, struct len_key, maybe, FG_MAX_SRC_ENTRIES);
BPF_HASH(by_len, struct len_key, __u32, FG_MAX_SRC_ENTRIES);
BPF_ARRAY(lengths, struct lengths, 1);
BPF_PERCPU_ARRAY(hits, __u64, 1);

int xdp_bloom(struct xdp_md *ctx)
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
		if (maybe.peek(&k) != 0)
			continue;
		if (by_len.lookup(&k)) {
			__u64 *h = hits.lookup(&zero);
			if (h)
				(*h)++;
			return XDP_DROP;
		}
	}
	return XDP_PASS;
}
