/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synauth.h — SYN authentication helpers: the keyed cookie and the challenge.
 *
 * The method ("invalid SYN-ACK"): a SYN from a source not yet verified is
 * answered from XDP with a SYN-ACK whose acknowledgment number is a keyed
 * cookie of the connection's addresses and ports. A real TCP stack in
 * SYN-SENT receives an ACK it did not expect and answers, as RFC 793
 * demands, with a RST whose sequence number is that acknowledgment number.
 * The program checks the RST's sequence number against the cookie (current
 * or previous key), marks the source verified and drops the RST; the
 * client's SYN is retransmitted about a second later and passes. A spoofed
 * source never sees the SYN-ACK, so it never answers.
 *
 * The challenge is built in place from the SYN, its TCP options cut off:
 * never larger than the SYN that caused it, so floodguard cannot amplify,
 * and capped per protected group in packets per second.
 *
 * Nothing here calls a map (BCC rewrites map calls only in the main file).
 */
#ifndef FLOODGUARD_SYNAUTH_H
#define FLOODGUARD_SYNAUTH_H

#include "abi.h"
#include "parse.h"

#define FG_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define FG_SIPROUND(v0, v1, v2, v3)                                         \
	do {                                                                \
		v0 += v1; v1 = FG_ROTL(v1, 13); v1 ^= v0; v0 = FG_ROTL(v0, 32); \
		v2 += v3; v3 = FG_ROTL(v3, 16); v3 ^= v2;                   \
		v0 += v3; v3 = FG_ROTL(v3, 21); v3 ^= v0;                   \
		v2 += v1; v1 = FG_ROTL(v1, 17); v1 ^= v2; v2 = FG_ROTL(v2, 32); \
	} while (0)

/* SipHash-2-4 over five 64-bit words (the message is word aligned; the
 * last word carries the length as SipHash does). agent/datapath/synauth.py
 * computes the same function. */
static __always_inline __u32 fg_siphash5(const struct fg_key128 *k, __u64 m0, __u64 m1, __u64 m2,
					 __u64 m3, __u64 m4)
{
	__u64 v0 = 0x736f6d6570736575ULL ^ k->k0;
	__u64 v1 = 0x646f72616e646f6dULL ^ k->k1;
	__u64 v2 = 0x6c7967656e657261ULL ^ k->k0;
	__u64 v3 = 0x7465646279746573ULL ^ k->k1;
	__u64 m[6] = { m0, m1, m2, m3, m4, 40ULL << 56 };

#pragma unroll
	for (int i = 0; i < 6; i++) {
		v3 ^= m[i];
		FG_SIPROUND(v0, v1, v2, v3);
		FG_SIPROUND(v0, v1, v2, v3);
		v0 ^= m[i];
	}
	v2 ^= 0xff;
	FG_SIPROUND(v0, v1, v2, v3);
	FG_SIPROUND(v0, v1, v2, v3);
	FG_SIPROUND(v0, v1, v2, v3);
	FG_SIPROUND(v0, v1, v2, v3);
	__u64 h = v0 ^ v1 ^ v2 ^ v3;
	return (__u32)(h ^ (h >> 32));
}

/* The cookie of a connection as the client sees it: its address and port
 * first. IPv4 addresses sit in word 0 of the 4-word address. */
static __always_inline __u32 fg_cookie(const struct fg_key128 *k, const __u32 *cli, const __u32 *srv,
				       __u16 cport, __u16 sport)
{
	__u64 m0 = ((__u64)cli[0] << 32) | cli[1];
	__u64 m1 = ((__u64)cli[2] << 32) | cli[3];
	__u64 m2 = ((__u64)srv[0] << 32) | srv[1];
	__u64 m3 = ((__u64)srv[2] << 32) | srv[3];
	__u64 m4 = ((__u64)cport << 16) | sport;
	return fg_siphash5(k, m0, m1, m2, m3, m4);
}

static __always_inline __u16 fg_csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Sum of 32-bit words (network order, read as host words: the one's
 * complement sum is byte-order independent when folded the same way). */
static __always_inline __u64 fg_sum_words(const __u32 *w, int n)
{
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < n)
			s += w[i];
	return s;
}

/* Rewrite a SYN (already truncated to its headers: Ethernet, VLAN tags,
 * a PPPoE session header, a 20-byte IPv4 header or a 40-byte IPv6 header, a 20-byte TCP header)
 * into the SYN-ACK challenge. Returns 0, or -1 if the headers are not
 * where they must be. */
static __always_inline int fg_build_challenge(void *data, void *data_end, __u16 l3_off, __u8 family,
					      __u8 pppoe, __u32 cookie)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

	void *l3 = data + (l3_off & 0x3f); /* two VLAN tags and PPPoE at most: < 64 */
	struct tcphdr *th;
	__u64 pseudo;

	if (family == 4) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end)
			return -1;
		th = (void *)(ip + 1);
		if ((void *)(th + 1) > data_end)
			return -1;
		__u32 a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		ip->tot_len = fg_htons(sizeof(*ip) + sizeof(*th));
		ip->id = 0;
		ip->frag_off = fg_htons(0x4000); /* DF */
		ip->ttl = 64;
		ip->check = 0;
		ip->check = fg_csum_fold(fg_sum_words((__u32 *)ip, 4) + ((__u32 *)ip)[4]);
		pseudo = (__u64)ip->saddr + ip->daddr + fg_htons(IPPROTO_TCP) + fg_htons(sizeof(*th));
	} else {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		th = (void *)(ip6 + 1);
		if ((void *)(th + 1) > data_end)
			return -1;
		struct in6_addr a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		ip6->payload_len = fg_htons(sizeof(*th));
		ip6->nexthdr = IPPROTO_TCP;
		ip6->hop_limit = 64;
		pseudo = fg_sum_words(ip6->saddr.in6_u.u6_addr32, 4) + fg_sum_words(ip6->daddr.in6_u.u6_addr32, 4) +
			 fg_htonl(sizeof(*th)) + fg_htonl(IPPROTO_TCP);
	}

	if (pppoe) {
		/* The session's length field counts the PPP protocol and the
		 * IP packet, which just shrank to its headers. */
		__u16 *plen = data + ((l3_off - 4) & 0x3f);
		if ((void *)(plen + 1) > data_end)
			return -1;
		*plen = fg_htons(2 + (family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr)) + sizeof(*th));
	}

	__u16 p = th->source;
	th->source = th->dest;
	th->dest = p;
	__u32 isn = th->seq;
	th->ack_seq = fg_htonl(cookie);
	/* Our own sequence number does not matter: the client resets. */
	th->seq = isn ^ fg_htonl(0x9e3779b9);
	((__u8 *)th)[12] = 5 << 4; /* data offset 5, no options */
	((__u8 *)th)[13] = FG_TCP_SYN | FG_TCP_ACK;
	th->window = fg_htons(1024);
	th->urg_ptr = 0;
	th->check = 0;
	th->check = fg_csum_fold(pseudo + fg_sum_words((__u32 *)th, 4) + ((__u32 *)th)[4]);
	return 0;
}

#endif /* FLOODGUARD_SYNAUTH_H */
