/*
 * stats.h - numeric helpers of the routing statistics (stats.c; the public
 * moe_route_stats_* API is in moe.h). Internal to engine/.
 */
#ifndef MOE_STATS_H
#define MOE_STATS_H

#include <stdint.h>

/* Entropy in nats of n non-negative weights, normalised by their sum
 * (0 ln 0 = 0; 0 when the sum is not positive). */
double stats_entropy(const float *p, int32_t n);
/* Squared coefficient of variation of n values: population variance over
 * the squared mean (0 when the mean is 0). */
double stats_cv2(const double *v, int32_t n);

#endif
