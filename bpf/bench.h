/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bench.h — bench-only (-DFG_BENCH): rewrite the source address of every
 * test-run packet so lookups see varying addresses, as on a real link.
 *
 * BPF_PROG_TEST_RUN repeats one packet; with one address every structure is
 * in cache and every candidate looks fast. The reference XDP_DROP program
 * includes this header too, so the rewrite costs the same on both sides of
 * a ratio.
 *
 * Address n = FG_BENCH_BASE + ((n * FG_BENCH_MULT) & FG_BENCH_MASK) * FG_BENCH_STEP,
 * written to the IPv4 source, or to word FG_BENCH_V6_WORD of the IPv6 source.
 */
#ifndef FLOODGUARD_BENCH_H
#define FLOODGUARD_BENCH_H

#include "parse.h"

#ifndef FG_BENCH_BASE
#define FG_BENCH_BASE 0x0a000000U
#endif
#ifndef FG_BENCH_MASK
#define FG_BENCH_MASK 0U
#endif
#ifndef FG_BENCH_MULT
#define FG_BENCH_MULT 2654435761U   /* odd: visits every index below the mask */
#endif
#ifndef FG_BENCH_STEP
#define FG_BENCH_STEP 1U
#endif
#ifndef FG_BENCH_V6_WORD
#define FG_BENCH_V6_WORD 3
#endif

/* The packet counter that drives the rewrite. Bench builds only; not pinned. */
BPF_PERCPU_ARRAY(bench_seq, __u64, 1);

/* BCC rewrites map method calls (bench_seq.lookup) only in the main source
 * file, not in headers, so the program looks the counter up and passes it. */
static __always_inline void fg_bench_vary(void *data, void *data_end, __u64 *seq)
{
	if (!seq)
		return;
	__u32 n = (__u32)(*seq)++;
	__u32 addr = fg_htonl(FG_BENCH_BASE + ((n * FG_BENCH_MULT) & FG_BENCH_MASK) * FG_BENCH_STEP);

	struct fg_cursor c = { .pos = data, .end = data_end };
	__u16 proto;
	if (fg_parse_eth(&c, &proto) < 0)
		return;
	if (proto == FG_ETH_P_IP) {
		struct iphdr *ip = c.pos;
		if ((void *)(ip + 1) <= data_end)
			ip->saddr = addr;
	} else if (proto == FG_ETH_P_IPV6) {
		struct ipv6hdr *ip6 = c.pos;
		if ((void *)(ip6 + 1) <= data_end)
			ip6->saddr.in6_u.u6_addr32[FG_BENCH_V6_WORD] = addr;
	}
}

#endif /* FLOODGUARD_BENCH_H */
