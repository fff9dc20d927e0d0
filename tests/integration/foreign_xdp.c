/* Stands in for another tool's XDP program: floodguard must not replace or
 * remove it unless forced. It passes every packet, so a test that forgets it
 * only loses protection, never traffic. */
#include <uapi/linux/bpf.h>

int xdp_foreign(struct xdp_md *ctx)
{
	return XDP_PASS;
}
