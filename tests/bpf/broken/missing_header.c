/* Includes a kernel header that no installation has: clang's "file not
 * found" for a linux/ header is how missing kernel headers show up. */
#include <linux/fg_no_such_header.h>

int xdp_headers(void *ctx)
{
	return 2;
}
