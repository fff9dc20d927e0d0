/* SPDX-License-Identifier: GPL-2.0 */
/*
 * prefix_lpm.bpf.c — candidate (a) of `floodguard bench prefixes`: the
 * kernel's LPM trie, one lookup per packet. Simple, exact, and a walk of
 * up to 32 nodes scattered in memory: the cost grows with the set's size
 * once it leaves the cache.
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

struct lpm4_key {
	__u32 prefixlen;
	__u32 addr;             /* network order */
};

/* Prefix -> 1. Written by agent/bench/prefixes.py. */
BPF_LPM_TRIE(lpm4, struct lpm4_key, __u32, FG_MAX_SRC_ENTRIES);
/* [0]: packets that matched a prefix. */
BPF_PERCPU_ARRAY(hits, __u64, 1);

int xdp_lpm(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 src;

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	if (fg_bench_src4(data, data_end, &src) < 0)
		return XDP_ABORTED;

	struct lpm4_key k = { .prefixlen = 32, .addr = src };
	if (!lpm4.lookup(&k))
		return XDP_PASS;
	__u64 *h = hits.lookup(&zero);
	if (h)
		(*h)++;
	return XDP_DROP;
}
