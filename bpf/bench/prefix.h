/* SPDX-License-Identifier: GPL-2.0 */
/*
 * prefix.h — what the candidates of `floodguard bench prefixes` share: the
 * packet's IPv4 source, the table size, and the (length, prefix) key of the
 * hash-per-length candidates. No map calls (BCC rewrites those only in the
 * main file).
 */
#ifndef FLOODGUARD_BENCH_PREFIX_H
#define FLOODGUARD_BENCH_PREFIX_H

#include "parse.h"

#ifndef FG_MAX_SRC_ENTRIES
#define FG_MAX_SRC_ENTRIES 1048576
#endif

/* The IPv4 source (network order) of the packet the bench sends; non-zero
 * return for anything else. */
static __always_inline int fg_bench_src4(void *data, void *data_end, __u32 *src)
{
	struct fg_pkt p = {};

	if (fg_parse(data, data_end, &p) != FG_PARSE_OK || p.family != 4)
		return -1;
	*src = p.src[0];
	return 0;
}

struct len_key {
	__u32 len;
	__u32 addr;             /* network order, masked to len */
};

/* The lengths in use, longest first, with their masks (network order). */
struct lengths {
	__u32 n;
	__u32 len[33];
	__u32 mask[33];
};

#endif
