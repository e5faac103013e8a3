// TRAINRT_API marks the public API; everything else in libtrainrt.so is hidden
// (-fvisibility=hidden). Static builds define TRAINRT_STATIC.
#pragma once

#if defined(TRAINRT_STATIC)
#define TRAINRT_API
#elif defined(_WIN32)
#if defined(TRAINRT_BUILDING_LIBRARY)
#define TRAINRT_API __declspec(dllexport)
#else
#define TRAINRT_API __declspec(dllimport)
#endif
#else
#define TRAINRT_API __attribute__((visibility("default")))
#endif
