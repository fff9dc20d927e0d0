/* Compiles, but the verifier must reject it: it reads packet byte 100
 * without checking it against data_end. tests/bpf/test_loader_errors.py
 * expects the rejection, with the verifier's reason, in VerifierError. */
#include <uapi/linux/bpf.h>

int xdp_oob(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;

	return data[100] ? XDP_PASS : XDP_DROP;
}
