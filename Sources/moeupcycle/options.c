/*
 * The one option parser of the moeupcycle host: every command describes its
 * options as a table of cli_option and calls cli_parse. Enum values are
 * parsed by the library's own name tables (moe_<enum>_from_name).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Adapters: the library's typed name lookups behind one signature. */
#define ENUM_ADAPTERS(kind)                                                   \
  moe_status cli_parse_##kind(void *out, const char *name) {                  \
    return moe_##kind##_from_name((moe_##kind *)out, name);                   \
  }                                                                           \
  const char *cli_name_##kind(int32_t v) { return moe_##kind##_name((moe_##kind)v); }
ENUM_ADAPTERS(dtype)
ENUM_ADAPTERS(method)
ENUM_ADAPTERS(router_init)
ENUM_ADAPTERS(routing)
ENUM_ADAPTERS(format)
ENUM_ADAPTERS(partition_select)
ENUM_ADAPTERS(granular_scaling)
ENUM_ADAPTERS(importance)
ENUM_ADAPTERS(drop_select)
ENUM_ADAPTERS(placement)
ENUM_ADAPTERS(train_only)
ENUM_ADAPTERS(lr_schedule)
ENUM_ADAPTERS(nonfinite)
#undef ENUM_ADAPTERS

static const cli_option *find_option(const cli_option *options, const char *name, size_t length) {
  for (const cli_option *o = options; o->name; o++)
    if (strlen(o->name) == length && strncmp(o->name, name, length) == 0) return o;
  return NULL;
}

/* Stores `value` into the option's target; 0 after printing why it is invalid. */
static int store_value(const cli_option *o, const char *value) {
  uint64_t u = 0;
  double d = 0;
  switch (o->kind) {
  case CLI_FLAG:
    return 0;
  case CLI_U32:
  case CLI_U64:
    if (!parse_u64(value, &u) || (o->kind == CLI_U32 && u > UINT32_MAX)) {
      fprintf(stderr, "moeupcycle: %s needs a non-negative whole number, not '%s'\n", o->name, value);
      return 0;
    }
    if (o->max > 0 && (u < o->min || u > o->max)) {
      fprintf(stderr, "moeupcycle: %s must be in %llu..%llu, not %s\n", o->name, (unsigned long long)o->min,
              (unsigned long long)o->max, value);
      return 0;
    }
    if (o->kind == CLI_U32) *(uint32_t *)o->target = (uint32_t)u;
    else *(uint64_t *)o->target = u;
    return 1;
  case CLI_DOUBLE:
  case CLI_FLOAT:
    if (!parse_double(value, &d)) {
      fprintf(stderr, "moeupcycle: %s needs a finite number, not '%s'\n", o->name, value);
      return 0;
    }
    if (o->kind == CLI_DOUBLE) *(double *)o->target = d;
    else *(float *)o->target = (float)d;
    return 1;
  case CLI_STRING:
    *(const char **)o->target = value;
    return 1;
  case CLI_ENUM:
    if (o->parse(o->target, value) != MOE_OK) {
      fprintf(stderr, "moeupcycle: %s: %s\n", o->name, moe_last_error());
      return 0;
    }
    return 1;
  }
  return 0;
}

int cli_parse(int argc, char **argv, const cli_option *options, const char **positional,
              int max_positional, int *count, int *help) {
  int n = 0;
  for (int i = 0; i < argc; i++) {
    const char *arg = argv[i];
    if (help && (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)) {
      *help = 1;
      continue;
    }
    if (strncmp(arg, "--", 2) != 0 || arg[2] == 0) {
      if (n >= max_positional) return bad_usage("unexpected argument", arg);
      positional[n++] = arg;
      continue;
    }
    const char *eq = strchr(arg, '=');
    size_t length = eq ? (size_t)(eq - arg) : strlen(arg);
    const cli_option *o = find_option(options, arg, length);
    if (!o) return bad_usage("unknown option", arg);
    if (o->kind == CLI_FLAG) {
      if (eq) return bad_usage("option takes no value", arg);
      *(int32_t *)o->target = o->set;
      continue;
    }
    const char *value = eq ? eq + 1 : NULL;
    if (!value) {
      if (i + 1 >= argc) return bad_usage("option needs a value", arg);
      value = argv[++i];
    }
    if (!store_value(o, value)) return bad_usage("invalid value for option", o->name);
  }
  if (count) *count = n;
  return 0;
}
