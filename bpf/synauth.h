/* SPDX-License-Identifier: GPL-2.0 */
/*
 * synauth.h — SYN authentication (placeholder until the SYN-flood issue).
 */
#ifndef FLOODGUARD_SYNAUTH_H
#define FLOODGUARD_SYNAUTH_H

#include "abi.h"
#include "parse.h"

/* Returns an XDP action when the SYN-authentication stage decided the
 * packet (setting *reason), or -1 to let the later stages decide. */
static __always_inline int fg_synauth(struct xdp_md *ctx, struct fg_pkt *p, struct fg_config *cfg,
				      struct fg_group *g, __u16 group, __u64 now, __u32 *reason)
{
	return -1;
}

#endif /* FLOODGUARD_SYNAUTH_H */
