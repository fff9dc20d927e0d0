/* SPDX-License-Identifier: GPL-2.0 */
/*
 * one_miss.bpf.c — bench only: the floor for any table that does not fit in
 * the cache. After the same source rewrite as every bench build (bench.h),
 * exactly one lookup of the IPv4 source in a hash of 1,048,576 entries
 * (FG_BENCH_ENTRIES), filled by agent/bench/datapath.py with the addresses
 * the rewrite visits, so every lookup finds its key: XDP_DROP. A key not
 * found passes, and the bench's reason column says so.
 *
 * A banned /32 in floodguard costs this lookup and whatever else it does;
 * `floodguard bench datapath` prints every scenario as a ratio to this one.
 */
#include <uapi/linux/bpf.h>

#include "bench.h"

#ifndef FG_BENCH_ENTRIES
#define FG_BENCH_ENTRIES (1U << 20)
#endif

BPF_HASH(keys, __u32, __u32, FG_BENCH_ENTRIES);

int xdp_one_miss(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
	struct fg_cursor c = { .pos = data, .end = data_end };
	__u16 proto;
	if (fg_parse_eth(&c, &proto) < 0 || proto != FG_ETH_P_IP)
		return XDP_PASS;
	struct iphdr *ip = c.pos;
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	__u32 saddr = ip->saddr;
	return keys.lookup(&saddr) ? XDP_DROP : XDP_PASS;
}
