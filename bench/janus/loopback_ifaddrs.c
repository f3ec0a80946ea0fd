/*
 * LD_PRELOAD shim for the benchmark's Janus: Janus skips interfaces flagged IFF_LOOPBACK when
 * it gathers ICE host candidates, so on its own it can only offer the machine's real
 * addresses. This wraps getifaddrs(3) and clears that flag, so that with
 * ice_enforce_list = "127.0.0.1" Janus gathers on loopback and all benchmark traffic stays
 * in 127.0.0.0/8. Built and used by bench/run only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <ifaddrs.h>
#include <net/if.h>

int getifaddrs(struct ifaddrs **ifap) {
	int (*real)(struct ifaddrs **) = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
	int rc = real(ifap);
	if (rc == 0) {
		for (struct ifaddrs *ifa = *ifap; ifa != NULL; ifa = ifa->ifa_next) {
			ifa->ifa_flags &= ~IFF_LOOPBACK;
		}
	}
	return rc;
}
