/* SPDX-License-Identifier: GPL-2.0 */
/*
 * abi.h — the contract between the XDP program and the Python agent.
 *
 * Everything here is mirrored by agent/datapath/abi.py (ctypes); the test
 * tests/bpf/test_abi.py compiles assertions generated from that mirror, so
 * a size, an offset or an enum value can never drift silently.
 *
 * Pinned maps outlive the program and the daemon. Changing any structure
 * below changes FG_ABI_VERSION: pins live under /sys/fs/bpf/floodguard/v<ABI>/
 * and the daemon migrates an older version's state at start.
 *
 * Addresses are stored in network byte order; IPv4 uses word 0 of a
 * 4-word address. Times are CLOCK_MONOTONIC nanoseconds (the program reads
 * bpf_ktime_get_coarse_ns(), the daemon clock_gettime(CLOCK_MONOTONIC)).
 * An expiry of 0 means "never".
 */
#ifndef FLOODGUARD_ABI_H
#define FLOODGUARD_ABI_H

#define FG_ABI_VERSION 2

/* Why a packet got its verdict. One counter per reason; these become the
 * `reason` label of floodguard_packets_total. */
enum fg_reason {
	FG_REASON_PASSED = 0,               /* went through every stage */
	FG_REASON_NON_IP = 1,               /* ARP, LLDP, ...: passed */
	FG_REASON_ALLOWLISTED = 2,          /* source on the allowlist: passed */
	FG_REASON_BANNED = 3,               /* source banned: dropped */
	FG_REASON_RULE_DROP = 4,            /* matched a mitigation rule with action drop */
	FG_REASON_RULE_RATE_LIMITED = 5,    /* over a mitigation rule's aggregate limit */
	FG_REASON_RATE_LIMITED = 6,         /* over the source's limit for its class */
	FG_REASON_MALFORMED = 7,            /* broken header; verdict from FG_CFG_MALFORMED_PASS */
	FG_REASON_SYN_CHALLENGED = 8,       /* unverified SYN answered with a challenge (XDP_TX) */
	FG_REASON_SYN_CHALLENGE_LIMITED = 9,/* unverified SYN, challenge budget spent: dropped */
	FG_REASON_SYN_VERIFIED = 10,        /* correct answer to a challenge: source verified, answer consumed */
	FG_REASON_SYN_AUTH_FAILED = 11,     /* wrong answer to a challenge, or a SYN that cannot be challenged: dropped */
	FG_REASON_MPLS = 12,                /* MPLS: passed unfiltered, counted apart from non-IP (parse.h says why) */
	FG_REASON_MAX = 13,
};

/* Traffic classes: per-source limits, detection thresholds and counters are
 * kept per class. Non-IP traffic has no limits. */
enum fg_class {
	FG_CLASS_TCP_SYN = 0,      /* TCP with SYN set and ACK clear */
	FG_CLASS_TCP_OTHER = 1,
	FG_CLASS_UDP = 2,
	FG_CLASS_ICMP = 3,         /* ICMP and ICMPv6 */
	FG_CLASS_FRAGMENT = 4,     /* any IPv4 or IPv6 fragment, first or not */
	FG_CLASS_OTHER = 5,        /* other IP protocols (GRE, ESP, ...) */
	FG_CLASS_NON_IP = 6,
	FG_CLASS_MAX = 7,
};
#define FG_LIMIT_CLASSES 6         /* classes 0..5 have per-source limits */

/* Who wrote an entry: each origin is updated without touching the others. */
enum fg_origin {
	FG_ORIGIN_POLICY = 0,      /* the policy file */
	FG_ORIGIN_OPERATOR = 1,    /* `floodguard ban`, the control socket */
	FG_ORIGIN_AUTO = 2,        /* the detection loop */
	FG_ORIGIN_MAX = 3,
};

enum fg_rule_action {
	FG_RULE_ACTION_DROP = 0,
	FG_RULE_ACTION_RATE_LIMIT = 1,   /* aggregate limit over every matching packet */
	FG_RULE_ACTION_SOURCE_LIMIT = 2, /* each source of a matching packet: its own bucket at the rule's
	                                  * rate instead of its group's limit (one target, one class) */
};

/* How many interfaces the counters tell apart; slot 0 = any other. */
#define FG_IF_SLOTS 16
/* ifslots is indexed by ifindex % FG_IFSLOT_TABLE and checked against ifindex. */
#define FG_IFSLOT_TABLE 256
/* Rules are scanned in order; the control loop keeps them few. */
#define FG_MAX_RULES 64
/* Watched source sets (policy `watch`): id 1..FG_MAX_WATCH-1, 0 = not watched. */
#define FG_MAX_WATCH 256
/* Bounded walk over IPv6 extension headers. */
#define FG_MAX_EXT_HDRS 8
/* IPv4 lookups: one array slot per /24, then a host table for /25../32. */
#define FG_DIR4_BITS 24
/* Token-bucket byte costs are fixed point with this many fraction bits. */
#define FG_BYTE_COST_SHIFT 16

/* fg_config.flags */
#define FG_CFG_MONITOR        (1U << 0) /* global monitor: count would-be drops, pass them */
#define FG_CFG_MALFORMED_PASS (1U << 1) /* pass malformed packets (default: drop) */
/* (1U << 2) was "learn verified sources from calm-time handshakes", removed as
 * forgeable (a forged handshake could earn it): not reused while old pins may still carry it. */

/* Token bucket settings (GCRA): a packet costs pkt_cost_ns of "time credit"
 * and len * byte_cost_fp >> FG_BYTE_COST_SHIFT more; a source may run
 * ahead of the clock by at most the tolerance (the burst). A cost of 0 means
 * no limit in that dimension. */
struct fg_rate {
	__u64 pkt_cost_ns;
	__u64 pkt_tolerance_ns;
	__u64 byte_cost_fp;
	__u64 byte_tolerance_ns;
};

/* A 128-bit key for the SYN challenge's keyed hash. */
struct fg_key128 {
	__u64 k0;
	__u64 k1;
};

/* Run-time settings (array of one). Written by the daemon on every apply. */
struct fg_config {
	__u32 flags;
	__u32 sample_every;        /* 1 in N IP packets copied to the samples ring; 0 = off */
	__u32 n_rules;             /* rules[0 .. n_rules) are scanned */
	__u32 v6_bucket_len;       /* IPv6 sources share a bucket per prefix of this length */
	__u32 v6_bucket_mask[4];   /* the mask for v6_bucket_len, network order */
	__u64 generation;          /* bumped by every apply; for `explain` and tests */
	__u64 syn_verified_ttl_ns; /* how long a verified source stays verified */
	struct fg_key128 syn_key[2]; /* SYN challenge keys: [0] current, [1] previous */
	struct fg_rate challenge_total; /* cap on SYN challenges of all groups together: each group's
	                                 * cap alone lets N groups aim N x theirs at one forged victim */
};

/* Per-interface slot for the counters (array of FG_IFSLOT_TABLE). */
struct fg_ifslot {
	__u32 ifindex;             /* 0 = free */
	__u32 slot;                /* 1 .. FG_IF_SLOTS-1 */
};

/* What an address maps to: the value of dir4 (per /24), host4 (per /32)
 * and lpm6. One lookup answers allow, ban and protected group together:
 * the daemon merges overlapping prefixes so that each slot carries the
 * longest covering source entry and the longest covering protected prefix. */
struct fg_addr_info {
	__u32 src_entry;           /* index into src_entries; 0 = none */
	__u16 group;               /* protected group; 0 = none (default limits) */
	__u8  flags;               /* FG_ADDR_* */
	__u8  pad;
};
#define FG_ADDR_HOSTS  (1U << 0) /* dir4 slot only: /25../32 entries exist in this /24, look in host4 */
#define FG_ADDR_BANNED (1U << 1) /* the source entry is a permanent, enforced ban and nothing else:
                                  * decided here, without reading src_entries (one memory access less
                                  * for every packet of a deny list) */

/* fg_src_entry.flags and fg_src_record.flags */
#define FG_SRC_BAN           (1U << 0) /* enforced ban until ban_expires */
#define FG_SRC_BAN_MONITOR   (1U << 1) /* monitor-only ban until ban_monitor_expires */
#define FG_SRC_ALLOW         (1U << 2) /* allowlisted until allow_expires */
#define FG_SRC_ALLOW_MONITOR (1U << 3) /* monitor-only allow until allow_monitor_expires */

/* What one origin said about one prefix. */
struct fg_src_record {
	__u64 expires;             /* 0 = never */
	__u64 created;             /* CLOCK_MONOTONIC ns when the entry was first written */
	__u32 flags;               /* FG_SRC_*; 0 = this origin has no entry */
	__u32 reason;              /* daemon's id for the reason text; 0 = none */
};

/* One allow/deny/ban prefix (array, index 0 unused). The first 40 bytes are
 * the effective state the program reads: this prefix's own records merged
 * with those of every shorter prefix covering it. The rest is for the
 * daemon: the prefix itself and what each origin set, so state is rebuilt
 * from the kernel after a restart. */
struct fg_src_entry {
	__u64 ban_expires;
	__u64 ban_monitor_expires;
	__u64 allow_expires;
	__u64 allow_monitor_expires;
	__u32 flags;               /* FG_SRC_* (effective) */
	__u8  family;              /* 4 or 6; 0 = free slot */
	__u8  prefix_len;
	__u16 watch;               /* watch set of the longest watched prefix covering this one; 0 = none */
	__u32 addr[4];
	struct fg_src_record ban[FG_ORIGIN_MAX];
	struct fg_src_record allow[FG_ORIGIN_MAX];
};

/* fg_group.flags */
#define FG_GROUP_MONITOR     (1U << 0) /* count would-be drops for this group, pass them */
#define FG_GROUP_TIGHT       (1U << 1) /* tight[] replaces base[] until tight_expires */
#define FG_GROUP_SYN_AUTH    (1U << 2) /* challenge unverified SYNs until syn_auth_expires */
#define FG_GROUP_SYN_ALWAYS  (1U << 3) /* challenge unverified SYNs always */
/* (1U << 4) was SYN learning in calm times: removed as forgeable, not reused. */

/* A protected group (array; group 0 = everything not protected). */
struct fg_group {
	struct fg_rate base[FG_LIMIT_CLASSES];   /* per-source limits from the policy */
	struct fg_rate tight[FG_LIMIT_CLASSES];  /* tightened by the control loop */
	struct fg_rate challenge;                /* cap on SYN challenges sent for this group */
	__u64 tight_expires;
	__u64 syn_auth_expires;
	__u32 flags;
	__u8  tight_origin;
	__u8  pad[3];
};

/* Per-group state the program writes (array, indexed like groups); also the
 * state of fg_config.challenge_total (challenge_state, array of one). */
struct fg_group_state {
	__u64 challenge_tat;       /* GCRA state of fg_group.challenge (packets) */
	__u64 pad;                 /* its byte dimension, unused */
};

/* fg_rule.flags */
#define FG_RULE_MONITOR (1U << 0) /* count would-be drops, pass them */

/* A mitigation rule (array of FG_MAX_RULES; family 0 = unused slot). */
struct fg_rule {
	__u64 expires;
	__u32 dst[4];              /* destination prefix, network order */
	__u32 dst_mask[4];
	__u8  family;
	__u8  dst_len;
	__u8  proto;               /* IPPROTO_*; 0 = any */
	__u8  action;              /* enum fg_rule_action */
	__u8  tcp_flags_mask;      /* match when (tcp_flags & mask) == value */
	__u8  tcp_flags_value;
	__u8  origin;
	__u8  flags;
	__u16 sport_lo, sport_hi;  /* inclusive ranges; 0..65535 = any */
	__u16 dport_lo, dport_hi;
	__u32 id;                  /* daemon's rule id */
	__u16 group;               /* the protected group the rule was made for */
	__u8  class_match;         /* match only this traffic class + 1; 0 = any class */
	__u8  pad;
	struct fg_rate rate;       /* the aggregate limit (RATE_LIMIT) or each source's (SOURCE_LIMIT) */
};

/* Per-rule state the program writes (array, indexed like rules). */
struct fg_rule_state {
	__u64 pkt_tat;
	__u64 byte_tat;
};

/* Per-source token bucket keys (LRU hashes). The group is part of the key:
 * a source gets separate budgets for separately protected targets. */
struct fg_bucket_key4 {
	__u32 addr;
	__u16 group;
	__u8  class;
	__u8  pad;
};
struct fg_bucket_key6 {
	__u32 addr[4];             /* masked to fg_config.v6_bucket_len */
	__u16 group;
	__u8  class;
	__u8  pad;
};
struct fg_bucket {
	__u64 pkt_tat;
	__u64 byte_tat;
};

/* Packet and byte counters (per CPU). */
struct fg_counter {
	__u64 packets;
	__u64 bytes;
};
/* stats index: (interface slot, reason, class, monitor flag). */
#define FG_STATS_ENTRIES (FG_IF_SLOTS * FG_REASON_MAX * FG_CLASS_MAX * 2)
#define FG_STATS_INDEX(slot, reason, class, mon) \
	((((slot) * FG_REASON_MAX + (reason)) * FG_CLASS_MAX + (class)) * 2 + (mon))
/* watch_stats index: (watch set, reason, monitor flag). */
#define FG_WATCH_ENTRIES (FG_MAX_WATCH * FG_REASON_MAX * 2)
#define FG_WATCH_INDEX(watch, reason, mon) ((((watch) * FG_REASON_MAX) + (reason)) * 2 + (mon))

/* Per (group, class) counters (per CPU); index group * FG_LIMIT_CLASSES + class. */
struct fg_group_counter {
	__u64 packets;             /* offered: every IP packet to the group */
	__u64 bytes;
	__u64 dropped_packets;     /* really dropped or answered (XDP_TX), not monitor */
	__u64 dropped_bytes;
	__u64 new_sources;         /* per-source buckets created: a spoofing signal */
};

/* Per protected destination host (LRU per-CPU hash). */
struct fg_dst_key {
	__u32 addr[4];
	__u8  family;
	__u8  pad[3];
};
struct fg_dst_counter {
	__u64 packets[FG_LIMIT_CLASSES];
	__u64 bytes[FG_LIMIT_CLASSES];
	__u64 dropped[FG_LIMIT_CLASSES];
	__u16 group;
	__u16 pad[3];
};

/* SYN authentication: sources proven to be real TCP stacks (LRU hashes). */
struct fg_verified_key6 {
	__u32 addr[4];
};
struct fg_verified {
	__u64 expires;
};

/* A sampled packet header, sent to the samples ring buffer (1 in
 * fg_config.sample_every IP packets). */
struct fg_sample {
	__u64 ts;
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;               /* host order */
	__u16 dport;
	__u16 group;
	__u16 len;                 /* frame length */
	__u8  family;
	__u8  proto;
	__u8  class;
	__u8  reason;
	__u8  tcp_flags;
	__u8  monitor;
	__u8  ifslot;
	__u8  action;              /* XDP_* verdict */
};

#endif /* FLOODGUARD_ABI_H */
