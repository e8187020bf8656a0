/*
 * check_engine.c - the engine's Check runner. Links libmoe alone (no curses,
 * readline or Lua), so a stray call from the engine into them fails to link.
 * Run one suite with CK_RUN_SUITE=name, one test with CK_RUN_CASE=name.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>

Suite *gguf_suite(void);
Suite *quant_suite(void);
Suite *tokenizer_suite(void);
Suite *sampler_suite(void);
Suite *model_suite(void);
Suite *synth_suite(void);
Suite *exit_suite(void);
Suite *speculate_suite(void);
Suite *router_suite(void);
Suite *stats_suite(void);
Suite *train_suite(void);
Suite *emoe_suite(void);
Suite *bricks_suite(void);

Suite *snapshot_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(gguf_suite());
    int failed;
    srunner_add_suite(sr, quant_suite());
    srunner_add_suite(sr, tokenizer_suite());
    srunner_add_suite(sr, sampler_suite());
    srunner_add_suite(sr, model_suite());
    srunner_add_suite(sr, synth_suite());
    srunner_add_suite(sr, exit_suite());
    srunner_add_suite(sr, speculate_suite());
    srunner_add_suite(sr, router_suite());
    srunner_add_suite(sr, stats_suite());
    srunner_add_suite(sr, train_suite());
    srunner_add_suite(sr, emoe_suite());
    srunner_add_suite(sr, bricks_suite());
    srunner_add_suite(sr, snapshot_suite());
    srunner_set_log(sr, "tests/check_engine.check.log");
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
