/* Does not compile: clang's message must reach the operator through BuildError. */
#include <uapi/linux/bpf.h>

int xdp_broken(struct xdp_md *ctx)
{
	return fg_no_such_identifier;
}
