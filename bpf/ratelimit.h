/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ratelimit.h — token buckets as GCRA (generic cell rate algorithm).
 *
 * A bucket is its "theoretical arrival time" (tat): the time at which the
 * source will have paid for everything it sent. A packet conforms when paying
 * for it keeps tat at most `tolerance` ahead of now; the tolerance is the
 * burst. One u64 per dimension, no division on the packet path: the daemon
 * precomputes the costs (struct fg_rate).
 *
 * Buckets are shared by all CPUs and updated without atomics: two CPUs may
 * both read the same tat and one update is lost, letting one extra packet
 * through. That is the documented price of not serialising the hot path.
 */
#ifndef FLOODGUARD_RATELIMIT_H
#define FLOODGUARD_RATELIMIT_H

#include "abi.h"

static __always_inline int fg_rate_unlimited(const struct fg_rate *r)
{
	return r->pkt_cost_ns == 0 && r->byte_cost_fp == 0;
}

/* Charge one packet of `len` bytes; returns 1 when it conforms (and the
 * bucket is charged), 0 when it is over the limit (bucket untouched). */
static __always_inline int fg_rate_charge(__u64 *pkt_tat, __u64 *byte_tat, const struct fg_rate *r,
					  __u64 now, __u32 len)
{
	__u64 pt = *pkt_tat, bt = *byte_tat;
	__u64 pcost = r->pkt_cost_ns;
	__u64 bcost = ((__u64)len * r->byte_cost_fp) >> FG_BYTE_COST_SHIFT;

	if (pt < now)
		pt = now;
	if (bt < now)
		bt = now;
	/* Under a constant rate tat never runs further ahead than the tolerance.
	 * When it does, the limit just changed (a tightening expired or began):
	 * start the source afresh under the new limit rather than make it pay
	 * off a debt run up under another one. */
	if (pt > now + r->pkt_tolerance_ns)
		pt = now;
	if (bt > now + r->byte_tolerance_ns)
		bt = now;
	if (pcost && pt + pcost - now > r->pkt_tolerance_ns)
		return 0;
	if (r->byte_cost_fp && bt + bcost - now > r->byte_tolerance_ns)
		return 0;
	*pkt_tat = pt + pcost;
	*byte_tat = bt + bcost;
	return 1;
}

#endif /* FLOODGUARD_RATELIMIT_H */
