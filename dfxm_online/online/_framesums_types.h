/* Instantiates the pass for one frame type T / TNAME, in double and in float products. */
#define C double
#define CNAME f64
#define VEC vd
#define LANES 8
#include "_framesums_pass.h"
#undef C
#undef CNAME
#undef VEC
#undef LANES
#define C float
#define CNAME f32
#define VEC vf
#define LANES 16
#include "_framesums_pass.h"
#undef C
#undef CNAME
#undef VEC
#undef LANES
#undef T
#undef TNAME
