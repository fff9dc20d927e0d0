/* SPDX-License-Identifier: GPL-2.0 */
/*
 * parse.h — cursor-based header parsing.
 *
 * Each helper bounds-checks its header against data_end, advances the cursor
 * and reports what comes next or an error. Nothing here reads a map: parsing
 * only fills struct fg_pkt, and the pipeline in floodguard.bpf.c decides.
 *
 * The split that matters: the source address is known once the fixed IPv4
 * (20 bytes) or IPv6 (40 bytes) header is present. Anything broken before
 * that point leaves no source to allow or ban (FG_PARSE_MALFORMED); anything
 * broken after it (IPv4 options, IPv6 extension headers, L4) is recorded in
 * fg_pkt.malformed so the allowlist and the bans still decide first.
 */
#ifndef FLOODGUARD_PARSE_H
#define FLOODGUARD_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

#include "abi.h"

#define fg_ntohs(x) ((__u16)__builtin_bswap16(x))
#define fg_htons(x) ((__u16)__builtin_bswap16(x))
#define fg_ntohl(x) ((__u32)__builtin_bswap32(x))
#define fg_htonl(x) ((__u32)__builtin_bswap32(x))

#define FG_ETH_P_8021Q  0x8100
#define FG_ETH_P_8021AD 0x88A8
#define FG_ETH_P_IP     0x0800
#define FG_ETH_P_IPV6   0x86DD
#define FG_ETH_P_PPPOE  0x8864  /* PPPoE session stage (discovery, 0x8863, is not IP) */
#define FG_ETH_P_MPLS   0x8847
#define FG_ETH_P_MPLSM  0x8848  /* multicast MPLS */

#define FG_PPP_IP   0x0021
#define FG_PPP_IPV6 0x0057

#define FG_IP_MF     0x2000
#define FG_IP_OFFSET 0x1FFF

/* TCP flag bits as they sit in byte 13 of the TCP header. */
#define FG_TCP_FIN 0x01
#define FG_TCP_SYN 0x02
#define FG_TCP_RST 0x04
#define FG_TCP_PSH 0x08
#define FG_TCP_ACK 0x10
#define FG_TCP_URG 0x20

enum fg_parse {
	FG_PARSE_OK = 0,        /* source known; fg_pkt.malformed may still be set */
	FG_PARSE_NON_IP,        /* not IPv4/IPv6 (ARP, LLDP, ...) */
	FG_PARSE_MALFORMED,     /* broken before the source address */
	FG_PARSE_MPLS,          /* MPLS: not opened (see fg_parse_eth) */
};

/* Where parsing failed after the source address was read (fg_pkt.malformed). */
enum fg_malformed {
	FG_MAL_NONE = 0,
	FG_MAL_L3,              /* bad IHL, total length, extension header chain */
	FG_MAL_L4,              /* truncated or inconsistent TCP/UDP/ICMP header */
};

/* Fragment position (fg_pkt.frag). */
enum fg_frag {
	FG_FRAG_NONE = 0,
	FG_FRAG_FIRST,          /* offset 0, more fragments: L4 header present */
	FG_FRAG_LATER,          /* offset > 0: no L4 header */
};

struct fg_cursor {
	void *pos;
	void *end;
	void *start;
};

struct fg_pkt {
	__u32 src[4];           /* network order; IPv4 in src[0] */
	__u32 dst[4];
	__u16 sport;            /* host order; 0 when unknown */
	__u16 dport;
	__u16 l3_off;           /* offset of the IP header in the frame */
	__u16 l4_off;           /* offset of the L4 header; 0 when not parsed */
	__u32 tcp_seq;          /* TCP sequence number, network order */
	__u8  family;           /* 4 or 6 */
	__u8  proto;            /* L4 protocol after IPv6 extension headers */
	__u8  tcp_flags;
	__u8  class;            /* enum fg_class */
	__u8  frag;             /* enum fg_frag */
	__u8  malformed;        /* enum fg_malformed */
	__u8  pppoe;            /* IP inside a PPPoE session: 8 bytes between the link and IP headers */
};

/* Ethernet and up to two VLAN tags (802.1Q, 802.1ad in any order). A third
 * tag is not something a gateway forwards: it is reported as malformed. */
static __always_inline int fg_parse_eth(struct fg_cursor *c, __u16 *proto)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return -1;
	__u16 p = fg_ntohs(eth->h_proto);
	c->pos = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (p != FG_ETH_P_8021Q && p != FG_ETH_P_8021AD)
			break;
		/* struct vlan_hdr lives in a non-UAPI header: two __be16. */
		__u16 *vlan = c->pos;
		if ((void *)(vlan + 2) > c->end)
			return -1;
		p = fg_ntohs(vlan[1]);
		c->pos = vlan + 2;
	}
	if (p == FG_ETH_P_8021Q || p == FG_ETH_P_8021AD)
		return -1;
	*proto = p;
	return 0;
}

/* PPPoE session header (version/type, code, session id, length) and the PPP
 * protocol: IPv4 and IPv6 go on to be parsed and filtered like any other IP;
 * PPP's own control protocols (LCP, IPCP, ...) are not IP. A header that is
 * not version 1, type 1, code 0 is no session frame a PPPoE peer accepts. */
static __always_inline int fg_parse_pppoe(struct fg_cursor *c, __u16 *proto)
{
	__u8 *h = c->pos;
	if ((void *)(h + 8) > c->end)
		return -1;
	if (h[0] != 0x11 || h[1] != 0)
		return -1;
	__u16 ppp = fg_ntohs(*(__u16 *)(h + 6));
	c->pos = h + 8;
	*proto = ppp == FG_PPP_IP ? FG_ETH_P_IP : ppp == FG_PPP_IPV6 ? FG_ETH_P_IPV6 : 0;
	return 0;
}

/* IPv4: the fixed header makes the addresses known; IHL, total length and
 * fragment bits are checked after that. */
static __always_inline int fg_parse_ipv4(struct fg_cursor *c, struct fg_pkt *p)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return FG_PARSE_MALFORMED;
	if (ip->version != 4)
		return FG_PARSE_MALFORMED;
	p->family = 4;
	p->src[0] = ip->saddr;
	p->dst[0] = ip->daddr;
	p->proto = ip->protocol;

	/* A total length beyond the frame means a truncated packet; a shorter
	 * one is normal (Ethernet pads short frames). */
	__u32 hlen = ip->ihl * 4;
	__u32 tot = fg_ntohs(ip->tot_len);
	if (hlen < sizeof(*ip) || tot < hlen || c->pos + hlen > c->end ||
	    c->pos + tot > c->end) {
		p->malformed = FG_MAL_L3;
		return FG_PARSE_OK;
	}
	__u16 frag = fg_ntohs(ip->frag_off);
	if (frag & FG_IP_OFFSET)
		p->frag = FG_FRAG_LATER;
	else if (frag & FG_IP_MF)
		p->frag = FG_FRAG_FIRST;
	/* RFC 1858: a TCP fragment at offset 8 bytes overwrites the flags of the
	 * first one on reassembly (an ACK here, a SYN at the server). No sender
	 * needs it: the smallest MTU leaves a first fragment 40 bytes. */
	if ((frag & FG_IP_OFFSET) == 1 && ip->protocol == IPPROTO_TCP)
		p->malformed = FG_MAL_L4;
	c->pos += hlen;
	return FG_PARSE_OK;
}

/* IPv6: walk at most FG_MAX_EXT_HDRS extension headers (hop-by-hop, routing,
 * destination options, fragment, AH). A longer chain is malformed: no
 * legitimate sender needs it, and an unbounded walk is what attackers want. */
static __always_inline int fg_parse_ipv6(struct fg_cursor *c, struct fg_pkt *p)
{
	struct ipv6hdr *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end)
		return FG_PARSE_MALFORMED;
	if (ip6->version != 6)
		return FG_PARSE_MALFORMED;
	p->family = 6;
	__builtin_memcpy(p->src, &ip6->saddr, 16);
	__builtin_memcpy(p->dst, &ip6->daddr, 16);
	c->pos = ip6 + 1;

	__u8 next = ip6->nexthdr;
#pragma unroll
	for (int i = 0; i < FG_MAX_EXT_HDRS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
		    next == IPPROTO_DSTOPTS) {
			__u8 *h = c->pos;
			if ((void *)(h + 2) > c->end)
				goto bad;
			next = h[0];
			c->pos += ((__u32)h[1] + 1) * 8;
		} else if (next == IPPROTO_AH) {
			__u8 *h = c->pos;
			if ((void *)(h + 2) > c->end)
				goto bad;
			next = h[0];
			c->pos += ((__u32)h[1] + 2) * 4;
		} else if (next == IPPROTO_FRAGMENT) {
			/* next header, reserved, offset (13 bits) + flags, id */
			__u8 *h = c->pos;
			if ((void *)(h + 8) > c->end)
				goto bad;
			next = h[0];
			__u16 off = fg_ntohs(*(__u16 *)(h + 2));
			c->pos += 8;
			if (off & 0xFFF8) {
				/* What follows is the middle of a payload: its bytes
				 * are not headers, whatever next says. */
				p->frag = FG_FRAG_LATER;
				p->proto = next;
				return FG_PARSE_OK;
			}
			if (off & 1)
				p->frag = FG_FRAG_FIRST;
			/* An atomic fragment (offset 0, M clear) carries a whole packet. */
		} else {
			p->proto = next;
			if (c->pos > c->end)
				goto bad;
			return FG_PARSE_OK;
		}
	}
bad:
	p->proto = next;
	p->malformed = FG_MAL_L3;
	return FG_PARSE_OK;
}

/* L4: ports and TCP flags; decides the class. A later fragment has no L4
 * header and is classified from the fragment bits alone. */
static __always_inline void fg_parse_l4(struct fg_cursor *c, struct fg_pkt *p)
{
	if (p->frag)
		p->class = FG_CLASS_FRAGMENT;
	if (p->malformed)
		goto by_proto;
	if (p->frag == FG_FRAG_LATER)
		goto unknown_l4;

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = c->pos;
		if ((void *)(th + 1) > c->end)
			goto bad;
		if (th->doff < 5 || c->pos + th->doff * 4 > c->end)
			goto bad;
		p->l4_off = c->pos - c->start;
		p->sport = fg_ntohs(th->source);
		p->dport = fg_ntohs(th->dest);
		p->tcp_flags = ((__u8 *)th)[13];
		p->tcp_seq = th->seq;
		if (!p->frag)
			p->class = (p->tcp_flags & (FG_TCP_SYN | FG_TCP_ACK)) == FG_TCP_SYN ?
				FG_CLASS_TCP_SYN : FG_CLASS_TCP_OTHER;
		return;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = c->pos;
		if ((void *)(uh + 1) > c->end)
			goto bad;
		if (fg_ntohs(uh->len) < sizeof(*uh))
			goto bad;
		p->l4_off = c->pos - c->start;
		p->sport = fg_ntohs(uh->source);
		p->dport = fg_ntohs(uh->dest);
		if (!p->frag)
			p->class = FG_CLASS_UDP;
		return;
	}
	if ((p->proto == IPPROTO_ICMP && p->family == 4) ||
	    (p->proto == IPPROTO_ICMPV6 && p->family == 6)) {
		/* type, code, checksum and 4 bytes of rest-of-header */
		__u8 *ih = c->pos;
		if ((void *)(ih + 8) > c->end)
			goto bad;
		p->l4_off = c->pos - c->start;
		/* Type and code stand in for ports so rules can match them. */
		p->sport = ih[0];
		p->dport = ih[1];
		if (!p->frag)
			p->class = FG_CLASS_ICMP;
		return;
	}
unknown_l4:
	if (!p->frag)
		p->class = FG_CLASS_OTHER;
	return;
bad:
	p->malformed = FG_MAL_L4;
by_proto:
	if (!p->frag)
		p->class = p->proto == IPPROTO_TCP ? FG_CLASS_TCP_OTHER :
			   p->proto == IPPROTO_UDP ? FG_CLASS_UDP :
			   (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) ? FG_CLASS_ICMP :
			   FG_CLASS_OTHER;
}

/* Parse everything; the return value says whether a source address exists. */
static __always_inline int fg_parse(void *data, void *data_end, struct fg_pkt *p)
{
	struct fg_cursor c = { .pos = data, .end = data_end, .start = data };
	__u16 proto;
	int rc;

	if (fg_parse_eth(&c, &proto) < 0)
		return FG_PARSE_MALFORMED;
	/* XXX: MPLS is counted, not opened. The label stack does not say what it
	 * carries (the control plane does): guessing IP from the first nibble
	 * misreads Ethernet pseudowires, and a challenge sent back down the same
	 * labels would go the wrong way. */
	if (proto == FG_ETH_P_MPLS || proto == FG_ETH_P_MPLSM)
		return FG_PARSE_MPLS;
	if (proto == FG_ETH_P_PPPOE) {
		if (fg_parse_pppoe(&c, &proto) < 0)
			return FG_PARSE_MALFORMED;
		p->pppoe = 1;
	}
	p->l3_off = c.pos - data;
	if (proto == FG_ETH_P_IP)
		rc = fg_parse_ipv4(&c, p);
	else if (proto == FG_ETH_P_IPV6)
		rc = fg_parse_ipv6(&c, p);
	else
		return FG_PARSE_NON_IP;
	if (rc != FG_PARSE_OK)
		return rc;
	fg_parse_l4(&c, p);
	return FG_PARSE_OK;
}

#endif /* FLOODGUARD_PARSE_H */
