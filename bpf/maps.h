/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h — every map of the program, with what it is for and who writes it.
 *
 * All state that must survive a restart or an upgrade is pinned under
 * FG_PIN_DIR (/sys/fs/bpf/floodguard/v<ABI>); BCC reuses a pinned map when it
 * exists and creates and pins it otherwise. Sizes are -D constants chosen by
 * the daemon from the policy's `capacity` block; a change needs a restart.
 * The defaults below are agent/contract/capacity.py's (tests/bpf/test_abi.py
 * checks that they agree).
 */
#ifndef FLOODGUARD_MAPS_H
#define FLOODGUARD_MAPS_H

#include "abi.h"

#ifndef FG_PIN_DIR
#error "FG_PIN_DIR must be set by the loader, e.g. -DFG_PIN_DIR=\"/sys/fs/bpf/floodguard/v2\""
#endif
#ifndef FG_MAX_SRC_ENTRIES
#define FG_MAX_SRC_ENTRIES 262145 /* capacity.prefixes + 1: entry 0 means "none" */
#endif
#ifndef FG_MAX_HOSTS4
#define FG_MAX_HOSTS4 262144
#endif
#ifndef FG_MAX_PREFIXES6
#define FG_MAX_PREFIXES6 65536
#endif
#ifndef FG_MAX_GROUPS
#define FG_MAX_GROUPS 4096
#endif
#ifndef FG_MAX_SOURCES4
#define FG_MAX_SOURCES4 1048576
#endif
#ifndef FG_MAX_SOURCES6
#define FG_MAX_SOURCES6 262144
#endif
#ifndef FG_MAX_DSTS
#define FG_MAX_DSTS 131072
#endif
#ifndef FG_MAX_VERIFIED
#define FG_MAX_VERIFIED 262144
#endif
#ifndef FG_SAMPLE_PAGES
#define FG_SAMPLE_PAGES 64
#endif

#define FG_PIN(name) FG_PIN_DIR "/" name

/* LPM trie key for IPv6 (the kernel's layout: prefix length, then data). */
struct fg_lpm6_key {
	__u32 prefixlen;
	__u32 addr[4];
};

/* Run-time settings, one entry. Written by the daemon (policy apply). */
BPF_TABLE_PINNED("array", __u32, struct fg_config, config, 1, FG_PIN("config"));

/* ifindex % FG_IFSLOT_TABLE -> counter slot of that interface. Written by the daemon at attach. */
BPF_TABLE_PINNED("array", __u32, struct fg_ifslot, ifslots, FG_IFSLOT_TABLE, FG_PIN("ifslots"));

/* IPv4 /24 -> allow/ban entry and protected group of that /24. Daemon (mmap). */
BPF_TABLE_PINNED7("array", __u32, struct fg_addr_info, dir4, 1 << FG_DIR4_BITS, FG_PIN("dir4"),
		  BPF_F_MMAPABLE);

/* IPv4 address -> the same, for /24s flagged FG_ADDR_HOSTS (prefixes longer than /24). Daemon. */
BPF_TABLE_PINNED("hash", __u32, struct fg_addr_info, host4, FG_MAX_HOSTS4, FG_PIN("host4"));

/* IPv6 prefix -> allow/ban entry and protected group, longest match. Daemon. */
BPF_TABLE_PINNED7("lpm_trie", struct fg_lpm6_key, struct fg_addr_info, lpm6, FG_MAX_PREFIXES6,
		  FG_PIN("lpm6"), BPF_F_NO_PREALLOC);

/* Allow/deny/ban entries (effective state + per-origin records). Daemon (mmap); index 0 unused. */
BPF_TABLE_PINNED7("array", __u32, struct fg_src_entry, src_entries, FG_MAX_SRC_ENTRIES,
		  FG_PIN("src_entries"), BPF_F_MMAPABLE);

/* Protected groups: per-source limits, tightening, SYN authentication. Daemon; group 0 = default. */
BPF_TABLE_PINNED("array", __u32, struct fg_group, groups, FG_MAX_GROUPS, FG_PIN("groups"));

/* Per-group state written by the program (SYN challenge budget). */
BPF_TABLE_PINNED("array", __u32, struct fg_group_state, group_state, FG_MAX_GROUPS,
		 FG_PIN("group_state"));

/* The budget of fg_config.challenge_total, one entry. Program. */
BPF_TABLE_PINNED("array", __u32, struct fg_group_state, challenge_state, 1, FG_PIN("challenge_state"));

/* Mitigation rules, scanned in order up to fg_config.n_rules. Daemon (control loop). */
BPF_TABLE_PINNED("array", __u32, struct fg_rule, rules, FG_MAX_RULES, FG_PIN("rules"));

/* Aggregate-limit state of each rule. Program. */
BPF_TABLE_PINNED("array", __u32, struct fg_rule_state, rule_state, FG_MAX_RULES, FG_PIN("rule_state"));

/* Per-source token buckets, one entry shared by all CPUs (racy updates are fine:
 * a lost update costs one packet of accuracy, per-CPU copies would multiply the
 * limit by the CPU count). LRU: a flood of new sources evicts buckets, never bans. */
BPF_TABLE_PINNED("lru_hash", struct fg_bucket_key4, struct fg_bucket, buckets4, FG_MAX_SOURCES4,
		 FG_PIN("buckets4"));
BPF_TABLE_PINNED("lru_hash", struct fg_bucket_key6, struct fg_bucket, buckets6, FG_MAX_SOURCES6,
		 FG_PIN("buckets6"));

/* Verdict counters by (interface slot, reason, class, monitor). Program; the collector sums CPUs. */
BPF_TABLE_PINNED("percpu_array", __u32, struct fg_counter, stats, FG_STATS_ENTRIES, FG_PIN("stats"));

/* Verdicts of packets from each watched source set (policy `watch`), by (set, reason, monitor). Program. */
BPF_TABLE_PINNED("percpu_array", __u32, struct fg_counter, watch_stats, FG_WATCH_ENTRIES, FG_PIN("watch_stats"));

/* Per (group, class) offered and dropped traffic. Program; read by the control loop each tick. */
BPF_TABLE_PINNED("percpu_array", __u32, struct fg_group_counter, group_stats,
		 FG_MAX_GROUPS * FG_LIMIT_CLASSES, FG_PIN("group_stats"));

/* Per protected destination host, per class. Program; read by the control loop each tick. */
BPF_TABLE_PINNED("lru_percpu_hash", struct fg_dst_key, struct fg_dst_counter, dst_stats, FG_MAX_DSTS,
		 FG_PIN("dst_stats"));

/* Packets matched by each rule. Program. */
BPF_TABLE_PINNED("percpu_array", __u32, struct fg_counter, rule_stats, FG_MAX_RULES, FG_PIN("rule_stats"));

/* Sources that answered a SYN challenge, until verified_ttl. Program. */
BPF_TABLE_PINNED("lru_hash", __u32, struct fg_verified, verified4, FG_MAX_VERIFIED, FG_PIN("verified4"));
BPF_TABLE_PINNED("lru_hash", struct fg_verified_key6, struct fg_verified, verified6, FG_MAX_VERIFIED,
		 FG_PIN("verified6"));

/* 1 in fg_config.sample_every packet headers, for top sources and ports. Program -> control loop.
 * Not pinned: samples are transient and each program instance brings its own ring. */
BPF_RINGBUF_OUTPUT(samples, FG_SAMPLE_PAGES);

#endif /* FLOODGUARD_MAPS_H */
