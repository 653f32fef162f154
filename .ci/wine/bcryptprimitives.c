/*
 * Go 1.24 and newer take their random numbers from ProcessPrng in
 * bcryptprimitives.dll, which Wine 8.0 (Debian 12's wine64) does not have.
 * .ci/steps/40-windows-tests builds this stand-in into the test prefix so
 * the Windows test binaries start under Wine; it is never shipped.
 * ProcessPrng is RtlGenRandom (advapi32's SystemFunction036) in a loop.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
	while (len > 0) {
		ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
		if (!SystemFunction036(data, n))
			return FALSE;
		data += n;
		len -= n;
	}
	return TRUE;
}
