/* Valid C with one warning (an unused variable). Programs are built with
 * -Wall -Werror, so tests/bpf/test_loader_errors.py expects a BuildError
 * with clang's warning, as an error, in it. */
#include <uapi/linux/bpf.h>

int xdp_warns(struct xdp_md *ctx)
{
	int fg_unused = 1;

	return XDP_PASS;
}
