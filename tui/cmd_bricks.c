/*
 * cmd_bricks.c - `moe-studio bricks` (stub while being written).
 */
#include "config.h"

#include "cli.h"

int cmd_bricks(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_fail("bricks", CLI_EXIT_FAIL, "not implemented yet");
}
