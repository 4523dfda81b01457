/*
 * TEST-ONLY shim, never shipped: Debian's wine 8.0 has no ProcessPrng in
 * bcryptprimitives.dll, which Rust's std imports for its random seeds.
 * `cargo xtask windows` builds this with mingw into a bcryptprimitives.dll
 * placed beside portwatch.exe in target/wine-test/ (loaded with
 * WINEDLLOVERRIDES=bcryptprimitives=n), so the cross-built binary runs
 * under wine. It forwards to RtlGenRandom (advapi32 SystemFunction036).
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
