/* SPDX-License-Identifier: GPL-2.0 */
/*
 * floodguard.bpf.c — XDP entry point.
 *
 * Pipeline, in order; the first stage that decides ends it:
 *   parse → allowlist → bans → malformed → mitigation rules →
 *   SYN authentication → per-source token buckets → pass
 *
 * The source and destination are looked up once each, in the same table:
 * the answer carries the allow/ban entry of the source and the protected
 * group of the destination. Every packet to a protected group is counted
 * for that group and host, dropped or not, so the control loop sees the
 * offered load (an attack does not "end" because its packets are dropped).
 *
 * Every verdict leaves through fg_finish() with a reason (abi.h) that is
 * counted per (interface, reason, class, monitor flag).
 */
#include <uapi/linux/bpf.h>

#include "abi.h"
#include "parse.h"
#include "maps.h"
#include "ratelimit.h"
#include "synauth.h"
#ifdef FG_BENCH
#include "bench.h"
#endif

/* Per-packet state. It lives in a per-CPU scratch map, not on the stack, on
 * purpose: the verifier does not track values stored in map memory, so the
 * many parse outcomes converge into one state before the later stages
 * instead of multiplying with them (the rule loop alone would otherwise blow
 * the 1M-instruction budget). Pointers stay in locals. */
struct fg_ctx {
	struct fg_pkt p;
	__u64 now;
	__u32 len;
	__u32 ifslot;
	__u32 reason;
	__u32 action;
	__u16 group;
	__u16 watch;            /* watched source set of the source (policy `watch`); 0 = none */
	__u8  monitor;          /* this verdict's drop is only counted */
	__u8  allow_monitor;    /* a monitor-only allow entry matched the source */
	__u8  new_source;       /* a per-source bucket was created */
	__u8  src_limited;      /* a SOURCE_LIMIT rule matched: src_rate replaces the group's limit */
	__u8  src_rule_mon;     /* that rule is monitor-only */
	struct fg_rate src_rate;
};

/* The clock, read at most once per packet and only when a stage needs it.
 * The coarse clock (CLOCK_MONOTONIC_COARSE, jiffy resolution) costs a
 * fraction of bpf_ktime_get_ns() on the hot path; expiries need no better,
 * and the policy compiler keeps every bucket's burst above 10 ms of its rate
 * so that a clock that moves in jiffies does not cap the rate. */
static __always_inline __u64 fg_now(struct fg_ctx *c)
{
	if (!c->now)
		c->now = bpf_ktime_get_coarse_ns();
	return c->now;
}

static __always_inline int fg_live(struct fg_ctx *c, __u64 expires)
{
	return expires == 0 || fg_now(c) < expires;
}

static __always_inline __u32 fg_ifslot(__u32 ifindex)
{
	__u32 k = ifindex % FG_IFSLOT_TABLE;
	struct fg_ifslot *s = ifslots.lookup(&k);

	if (s && s->ifindex == ifindex && s->slot < FG_IF_SLOTS)
		return s->slot;
	return 0;
}

/* IPv4: the /24 slot answers unless it says that longer prefixes exist in
 * this /24; then the host table answers, falling back to the slot. */
static __always_inline struct fg_addr_info *fg_lookup4(__u32 addr)
{
	__u32 k = fg_ntohl(addr) >> (32 - FG_DIR4_BITS);
	struct fg_addr_info *ai = dir4.lookup(&k);

	if (ai && (ai->flags & FG_ADDR_HOSTS)) {
		struct fg_addr_info *h = host4.lookup(&addr);
		if (h)
			return h;
	}
	return ai;
}

static __always_inline struct fg_addr_info *fg_lookup6(const __u32 *addr)
{
	struct fg_lpm6_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, addr, 16);
	return lpm6.lookup(&k);
}

/* Scratch space for struct fg_ctx (see above). Program only; not pinned. */
BPF_PERCPU_ARRAY(scratch, struct fg_ctx, 1);

/* Count the verdict, sample it, and turn it into an XDP action. A drop under
 * monitor becomes a pass with the monitor flag; its reason stays. */
static __always_inline int fg_finish(struct fg_ctx *c, struct fg_config *cfg)
{
	__u32 action = c->action;
	__u32 reason = c->reason;
	__u32 mon = 0;
	__u8 cls = c->p.class;

	if (action != XDP_PASS && c->monitor) {
		action = XDP_PASS;
		mon = 1;
	}
	/* A monitor-only allow entry: the packet was really dropped, and the
	 * counter says the allowlist would have passed it. */
	if (action == XDP_DROP && c->allow_monitor) {
		reason = FG_REASON_ALLOWLISTED;
		mon = 1;
	}

	__u32 si = FG_STATS_INDEX(c->ifslot, reason, cls, mon);
	struct fg_counter *sc = stats.lookup(&si);
	if (sc) {
		sc->packets++;
		sc->bytes += c->len;
	}
	if (c->watch) {
		__u32 w = c->watch;
		__u32 wi = FG_WATCH_INDEX(w < FG_MAX_WATCH ? w : 0, reason, mon);
		struct fg_counter *wc = watch_stats.lookup(&wi);
		if (wc) {
			wc->packets++;
			wc->bytes += c->len;
		}
	}
	if (!c->p.family || cls >= FG_LIMIT_CLASSES)
		return action;

	/* Not delivered: dropped, or answered in XDP instead (a SYN challenge). */
	__u32 dropped = action != XDP_PASS;
	__u32 gi = (__u32)c->group * FG_LIMIT_CLASSES + cls;
	struct fg_group_counter *gc = group_stats.lookup(&gi);
	if (gc) {
		gc->packets++;
		gc->bytes += c->len;
		gc->dropped_packets += dropped;
		gc->dropped_bytes += dropped ? c->len : 0;
		gc->new_sources += c->new_source;
	}

	if (c->group) {
		struct fg_dst_key dk = { .family = c->p.family };
		__builtin_memcpy(dk.addr, c->p.dst, 16);
		struct fg_dst_counter *dc = dst_stats.lookup(&dk);
		if (!dc) {
			struct fg_dst_counter z = { .group = c->group };
			dst_stats.update(&dk, &z);
			dc = dst_stats.lookup(&dk);
		}
		/* Re-read and re-check the class right here: a bound checked before
		 * the helper calls does not survive clang's register spills. */
		__u32 k = *(volatile __u8 *)&c->p.class;
		if (dc && k < FG_LIMIT_CLASSES) {
			dc->packets[k]++;
			dc->bytes[k] += c->len;
			dc->dropped[k] += dropped;
		}
	}

	__u32 every = cfg->sample_every;
	if (every && bpf_get_prandom_u32() % every == 0) {
		struct fg_sample s = {
			.ts = fg_now(c),
			.sport = c->p.sport,
			.dport = c->p.dport,
			.group = c->group,
			.len = c->len,
			.family = c->p.family,
			.proto = c->p.proto,
			.class = cls,
			.reason = reason,
			.tcp_flags = c->p.tcp_flags,
			.monitor = mon,
			.ifslot = c->ifslot,
			.action = action,
		};
		__builtin_memcpy(s.src, c->p.src, 16);
		__builtin_memcpy(s.dst, c->p.dst, 16);
		samples.ringbuf_output(&s, sizeof(s), 0);
	}
	return action;
}

/* First matching rule decides: drop; or charge its aggregate bucket and go on
 * to the later stages if the packet conforms; or (SOURCE_LIMIT) hand its
 * rate to the per-source stage for this packet's source. Returns 1 when it
 * decided. */
static __always_inline int fg_rules(struct fg_ctx *c, struct fg_config *cfg)
{
	__u32 n = cfg->n_rules;
	struct fg_pkt *p = &c->p;

	for (__u32 i = 0; i < FG_MAX_RULES; i++) {
		if (i >= n)
			break;
		__u32 k = i;
		struct fg_rule *r = rules.lookup(&k);
		if (!r)
			break;
		if (r->family != p->family || !fg_live(c, r->expires))
			continue;
		if ((p->dst[0] & r->dst_mask[0]) != r->dst[0] ||
		    (p->dst[1] & r->dst_mask[1]) != r->dst[1] ||
		    (p->dst[2] & r->dst_mask[2]) != r->dst[2] ||
		    (p->dst[3] & r->dst_mask[3]) != r->dst[3])
			continue;
		if (r->proto && r->proto != p->proto)
			continue;
		if (p->sport < r->sport_lo || p->sport > r->sport_hi ||
		    p->dport < r->dport_lo || p->dport > r->dport_hi)
			continue;
		if ((p->tcp_flags & r->tcp_flags_mask) != r->tcp_flags_value)
			continue;
		if (r->class_match && r->class_match != p->class + 1)
			continue;

		struct fg_counter *rc = rule_stats.lookup(&k);
		if (rc) {
			rc->packets++;
			rc->bytes += c->len;
		}
		if (r->action == FG_RULE_ACTION_SOURCE_LIMIT) {
			c->src_limited = 1;
			c->src_rule_mon = (r->flags & FG_RULE_MONITOR) != 0;
			c->src_rate = r->rate;
			return 0;
		}
		c->monitor = (cfg->flags & FG_CFG_MONITOR) || (r->flags & FG_RULE_MONITOR);
		if (r->action == FG_RULE_ACTION_DROP) {
			c->reason = FG_REASON_RULE_DROP;
			c->action = XDP_DROP;
			return 1;
		}
		struct fg_rule_state *st = rule_state.lookup(&k);
		if (st && !fg_rate_charge(&st->pkt_tat, &st->byte_tat, &r->rate, fg_now(c), c->len)) {
			c->reason = FG_REASON_RULE_RATE_LIMITED;
			c->action = XDP_DROP;
			return 1;
		}
		c->monitor = 0;
		return 0;
	}
	return 0;
}

/* The bucket key of an IPv6 source: buckets are per v6_bucket_len prefix. */
static __always_inline struct fg_bucket_key6 fg_bucket_key6(struct fg_ctx *c, struct fg_config *cfg, __u8 cls)
{
	struct fg_bucket_key6 k = { .group = c->group, .class = cls };

	k.addr[0] = c->p.src[0] & cfg->v6_bucket_mask[0];
	k.addr[1] = c->p.src[1] & cfg->v6_bucket_mask[1];
	k.addr[2] = c->p.src[2] & cfg->v6_bucket_mask[2];
	k.addr[3] = c->p.src[3] & cfg->v6_bucket_mask[3];
	return k;
}

/* Per-source token bucket for (source, group, class). Returns 1 when the
 * packet is over the limit. */
static __always_inline int fg_over_limit(struct fg_ctx *c, struct fg_config *cfg, struct fg_group *g)
{
	__u8 cls = c->p.class;

	if (cls >= FG_LIMIT_CLASSES)
		return 0;
	struct fg_rate *r = &g->base[cls];
	if (c->src_limited)
		r = &c->src_rate;
	else if ((g->flags & FG_GROUP_TIGHT) && fg_live(c, g->tight_expires))
		r = &g->tight[cls];
	if (fg_rate_unlimited(r))
		return 0;

	struct fg_bucket *b;
	if (c->p.family == 4) {
		struct fg_bucket_key4 k = { .addr = c->p.src[0], .group = c->group, .class = cls };
		b = buckets4.lookup(&k);
		if (!b) {
			struct fg_bucket nb = {};
			int ok = fg_rate_charge(&nb.pkt_tat, &nb.byte_tat, r, fg_now(c), c->len);
			buckets4.update(&k, &nb);
			c->new_source = 1;
			return !ok;
		}
	} else {
		struct fg_bucket_key6 k = fg_bucket_key6(c, cfg, cls);
		b = buckets6.lookup(&k);
		if (!b) {
			struct fg_bucket nb = {};
			int ok = fg_rate_charge(&nb.pkt_tat, &nb.byte_tat, r, fg_now(c), c->len);
			buckets6.update(&k, &nb);
			c->new_source = 1;
			return !ok;
		}
	}
	return !fg_rate_charge(&b->pkt_tat, &b->byte_tat, r, fg_now(c), c->len);
}

static __always_inline int fg_verified(struct fg_ctx *c)
{
	struct fg_verified *v;
	if (c->p.family == 4) {
		__u32 k = c->p.src[0];
		v = verified4.lookup(&k);
	} else {
		struct fg_verified_key6 k = {};
		__builtin_memcpy(k.addr, c->p.src, 16);
		v = verified6.lookup(&k);
	}
	return v && fg_live(c, v->expires);
}

static __always_inline void fg_verify(struct fg_ctx *c, struct fg_config *cfg)
{
	struct fg_verified v = { .expires = fg_now(c) + cfg->syn_verified_ttl_ns };
	if (c->p.family == 4) {
		__u32 k = c->p.src[0];
		verified4.update(&k, &v);
	} else {
		struct fg_verified_key6 k = {};
		__builtin_memcpy(k.addr, c->p.src, 16);
		verified6.update(&k, &v);
	}
}

/* Charge one challenge to its group's cap, then to the gateway's. The group
 * comes first: a group over its own cap must not spend what the others share. */
static __always_inline int fg_challenge_budget(struct fg_ctx *c, struct fg_config *cfg, struct fg_group *g)
{
	__u32 gid = c->group;
	__u32 zero = 0;
	struct fg_group_state *gs = group_state.lookup(&gid);
	struct fg_group_state *all = challenge_state.lookup(&zero);

	if (!gs || !all)
		return 0;
	if (!fg_rate_unlimited(&g->challenge) &&
	    !fg_rate_charge(&gs->challenge_tat, &gs->pad, &g->challenge, fg_now(c), 60))
		return 0;
	return fg_rate_unlimited(&cfg->challenge_total) ||
	       fg_rate_charge(&all->challenge_tat, &all->pad, &cfg->challenge_total, fg_now(c), 60);
}

/* SYN authentication (synauth.h explains the method). Returns 1 when it
 * decided the packet (c->reason and c->action set), 0 to go on. */
static __always_inline int fg_synauth(struct xdp_md *ctx, struct fg_ctx *c, struct fg_config *cfg,
				      struct fg_group *g, __u8 group_mon)
{
	__u8 flags = c->p.tcp_flags;
	int active = (g->flags & FG_GROUP_SYN_ALWAYS) ||
		     ((g->flags & FG_GROUP_SYN_AUTH) && fg_live(c, g->syn_auth_expires));

	/* No learning in calm times: a SYN then an ACK is all an observer sees
	 * of a handshake, and a forger sends both. Only a challenge verifies. */
	if (!active)
		return 0;

	if ((flags & (FG_TCP_RST | FG_TCP_ACK)) == FG_TCP_RST) {
		/* A bare RST: the answer to a challenge, or a forgery. */
		if (fg_verified(c))
			return 0;
		__u32 seq = fg_ntohl(c->p.tcp_seq);
		if (seq == fg_cookie(&cfg->syn_key[0], c->p.src, c->p.dst, c->p.sport, c->p.dport) ||
		    seq == fg_cookie(&cfg->syn_key[1], c->p.src, c->p.dst, c->p.sport, c->p.dport)) {
			if (!group_mon)
				fg_verify(c, cfg);
			c->reason = FG_REASON_SYN_VERIFIED;
		} else {
			c->reason = FG_REASON_SYN_AUTH_FAILED;
		}
		c->action = XDP_DROP;
		c->monitor = group_mon;
		return 1;
	}

	/* By its flags, not its class: a SYN in a first fragment is classed a
	 * fragment and must not slip past as one (later ones carry no flags). */
	if ((flags & (FG_TCP_SYN | FG_TCP_ACK)) != FG_TCP_SYN || fg_verified(c))
		return 0;

	c->monitor = group_mon;
	__u32 hdrs = c->p.l3_off + (c->p.family == 4 ? 20 : 40);
	if (c->p.l4_off != hdrs || c->p.frag) {
		/* IP options, IPv6 extension headers or a fragment: no legitimate
		 * client needs them on a SYN, and the challenge cannot be built in place. */
		c->reason = FG_REASON_SYN_AUTH_FAILED;
		c->action = XDP_DROP;
		return 1;
	}
	if (!fg_challenge_budget(c, cfg, g)) {
		c->reason = FG_REASON_SYN_CHALLENGE_LIMITED;
		c->action = XDP_DROP;
		return 1;
	}
	c->reason = FG_REASON_SYN_CHALLENGED;
	c->action = XDP_TX;
	if (group_mon)
		return 1; /* counted as challenged, passed untouched */

	__u32 cookie = fg_cookie(&cfg->syn_key[0], c->p.src, c->p.dst, c->p.sport, c->p.dport);
	int shrink = (int)(hdrs + 20) - (int)c->len;
	/* The counters keep the length of the SYN as it arrived. */
	if (shrink < 0 && bpf_xdp_adjust_tail(ctx, shrink))
		goto fail;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (fg_build_challenge(data, data_end, c->p.l3_off, c->p.family, c->p.pppoe, cookie))
		goto fail;
	return 1;
fail:
	c->reason = FG_REASON_SYN_AUTH_FAILED;
	c->action = XDP_DROP;
	return 1;
}

int xdp_floodguard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

#ifdef FG_BENCH
	fg_bench_vary(data, data_end, bench_seq.lookup(&zero));
#endif
	/* Both are arrays of one: entry 0 always exists. */
	struct fg_config *cfg = config.lookup(&zero);
	struct fg_ctx *c = scratch.lookup(&zero);
	if (!cfg || !c)
		return XDP_ABORTED;
	__builtin_memset(c, 0, sizeof(*c));
	c->len = data_end - data;
	c->ifslot = fg_ifslot(ctx->ingress_ifindex);
	c->action = XDP_PASS;
	c->reason = FG_REASON_PASSED;
	__u8 global_mon = (cfg->flags & FG_CFG_MONITOR) != 0;

	int rc = fg_parse(data, data_end, &c->p);
	if (rc == FG_PARSE_NON_IP || rc == FG_PARSE_MPLS) {
		c->p.class = FG_CLASS_NON_IP;
		c->reason = rc == FG_PARSE_MPLS ? FG_REASON_MPLS : FG_REASON_NON_IP;
		goto out;
	}
	if (rc != FG_PARSE_OK) {
		/* No source to allow or ban: nothing but the policy's verdict applies. */
		c->p.class = FG_CLASS_OTHER;
		c->p.family = 0;
		goto malformed;
	}

	struct fg_addr_info *sa, *da;
	if (c->p.family == 4) {
		sa = fg_lookup4(c->p.src[0]);
		da = fg_lookup4(c->p.dst[0]);
	} else {
		sa = fg_lookup6(c->p.src);
		da = fg_lookup6(c->p.dst);
	}
	__u32 src_idx = sa ? sa->src_entry : 0;
	__u8 src_flags = sa ? sa->flags : 0;
	__u32 gid = da ? da->group : 0;
	if (gid >= FG_MAX_GROUPS)
		gid = 0;
	c->group = gid;
	struct fg_group *grp = groups.lookup(&gid);
	if (!grp)
		return XDP_ABORTED; /* gid < FG_MAX_GROUPS: always present */

	/* Allowlist and bans: one entry answers both; a permanent ban (no allow
	 * anywhere over it, no expiry) is already in the address answer. */
	if (src_flags & FG_ADDR_BANNED) {
		c->reason = FG_REASON_BANNED;
		c->action = XDP_DROP;
		c->monitor = global_mon;
		goto out;
	}
	if (src_idx) {
		struct fg_src_entry *e = src_entries.lookup(&src_idx);
		if (e) {
			__u32 f = e->flags;
			c->watch = e->watch;
			if ((f & FG_SRC_ALLOW) && fg_live(c, e->allow_expires)) {
				c->reason = FG_REASON_ALLOWLISTED;
				goto out;
			}
			if ((f & FG_SRC_ALLOW_MONITOR) && fg_live(c, e->allow_monitor_expires))
				c->allow_monitor = 1;
			if ((f & FG_SRC_BAN) && fg_live(c, e->ban_expires)) {
				c->reason = FG_REASON_BANNED;
				c->action = XDP_DROP;
				c->monitor = global_mon;
				goto out;
			}
			if ((f & FG_SRC_BAN_MONITOR) && fg_live(c, e->ban_monitor_expires)) {
				c->reason = FG_REASON_BANNED;
				c->action = XDP_DROP;
				c->monitor = 1;
				goto out;
			}
		}
	}

	if (c->p.malformed)
		goto malformed;

	if (cfg->n_rules && fg_rules(c, cfg))
		goto out;

	__u8 group_mon = global_mon || (grp->flags & FG_GROUP_MONITOR);

	if (c->p.proto == IPPROTO_TCP && grp->flags & (FG_GROUP_SYN_AUTH | FG_GROUP_SYN_ALWAYS) &&
	    fg_synauth(ctx, c, cfg, grp, group_mon))
		goto out;

	if (fg_over_limit(c, cfg, grp)) {
		c->reason = FG_REASON_RATE_LIMITED;
		c->action = XDP_DROP;
		c->monitor = group_mon || (c->src_limited && c->src_rule_mon);
	}
	goto out;

malformed:
	c->reason = FG_REASON_MALFORMED;
	c->action = (cfg->flags & FG_CFG_MALFORMED_PASS) ? XDP_PASS : XDP_DROP;
	c->monitor = global_mon;
out:
	return fg_finish(c, cfg);
}
