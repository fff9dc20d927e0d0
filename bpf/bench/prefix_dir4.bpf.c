/* SPDX-License-Identifier: GPL-2.0 */
/*
 * prefix_dir4.bpf.c — candidate (d) of `floodguard bench prefixes`: the
 * structure floodguard uses (agent/datapath/addrtable.py). A /24 array slot
 * answers in one memory access; only /24s holding longer prefixes send the
 * lookup on to the host hash.
 *
 * It declares the product's maps (maps.h) at the loader's pin directory, so
 * they are filled by the product's own writer (AddressTable), and repeats
 * the product's lookup (fg_lookup4 in floodguard.bpf.c) without the rest
 * of the pipeline.
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

#include "abi.h"
#include "maps.h"
#include "bench.h"
#include "parse.h"
#include "bench/prefix.h"

/* [0]: packets that matched a prefix. */
BPF_PERCPU_ARRAY(hits, __u64, 1);

int xdp_dir4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 src;

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	if (fg_bench_src4(data, data_end, &src) < 0)
		return XDP_ABORTED;

	__u32 k = fg_ntohl(src) >> (32 - FG_DIR4_BITS);
	struct fg_addr_info *ai = dir4.lookup(&k);
	if (ai && (ai->flags & FG_ADDR_HOSTS)) {
		struct fg_addr_info *h = host4.lookup(&src);
		if (h)
			ai = h;
	}
	if (!ai || !ai->src_entry)
		return XDP_PASS;
	__u64 *h = hits.lookup(&zero);
	if (h)
		(*h)++;
	return XDP_DROP;
}
