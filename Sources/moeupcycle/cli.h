/* Helpers shared by the moeupcycle host's command files. */
#ifndef MOEUPCYCLE_CLI_H
#define MOEUPCYCLE_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "moeupcycle.h"

/* Prints moe_last_error() with the status text; returns exit code 1. */
int fail(moe_status st);
/* Prints a usage error; returns exit code 2. */
int bad_usage(const char *msg, const char *arg);
double now_seconds(void);
void human_bytes(double b, char *buf, size_t n);
void json_string(FILE *f, const char *s);
/* Strict number parsing: 1 on success, 0 on any junk. */
int parse_u64(const char *s, uint64_t *out);
int parse_u32(const char *s, uint32_t *out);
int parse_double(const char *s, double *out);

/* layer.c */
int cmd_topology(int argc, char **argv);
int cmd_bench_moe(int argc, char **argv);
/* train.c */
int cmd_train(int argc, char **argv);
int cmd_bench_train(int argc, char **argv);
/* Streaming read bandwidth in GB/s with `threads` threads over `bytes` (best of 3). */
double stream_bandwidth(size_t bytes, int threads);

/* model.c */
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench_decode(int argc, char **argv);
/* State of progress_bar: set start = now_seconds(), last_percent = -1. */
struct progress_state { double start; int last_percent; };
/* Draws a progress bar on stderr when it is a terminal (a moe_progress_fn). */
int progress_bar(uint64_t done, uint64_t total, const char *stage, void *user_data);

#endif
