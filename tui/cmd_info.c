/*
 * cmd_info.c - `moe-studio info`: a model's architecture, hyperparameters,
 * parameter count, weight bytes, dominant type and file size, as text or
 * one JSON object; optionally the tensor table (read with the GGUF reader).
 * Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "gguf.h"

static const char *const info_cmd = "info";

static void info_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio info -m MODEL [--json] [--tensors]\n"
            "  -m, --model MODEL  GGUF file to describe\n"
            "      --json         print one JSON object\n"
            "      --tensors      list every tensor (name, type, shape, bytes)\n");
}

static void info_shape_str(const gguf_tensor_info *t, char *buf, size_t n)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "[");
    for (int d = 0; d < t->n_dims && off < n; d++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", d ? ", " : "",
                                (long long)t->ne[d]);
    if (off < n)
        snprintf(buf + off, n - off, "]");
}

static int info_print_text(const moe_model_info *in, const gguf_ctx *g)
{
    printf("name           %s\n", in->name ? in->name : "");
    printf("arch           %s\n", in->arch ? in->arch : "");
    printf("path           %s\n", in->path ? in->path : "");
    printf("ftype          %s\n", in->ftype ? in->ftype : "");
    printf("n_vocab        %d\n", in->n_vocab);
    printf("n_ctx_train    %d\n", in->n_ctx_train);
    printf("n_embd         %d\n", in->n_embd);
    printf("n_layer        %d\n", in->n_layer);
    printf("n_head         %d\n", in->n_head);
    printf("n_head_kv      %d\n", in->n_head_kv);
    printf("n_embd_head    %d\n", in->n_embd_head);
    printf("n_ff           %d\n", in->n_ff);
    printf("n_expert       %d\n", in->n_expert);
    printf("n_expert_used  %d\n", in->n_expert_used);
    printf("n_ff_exp       %d\n", in->n_ff_exp);
    printf("shared_expert  %s\n", in->has_shared_expert ? "yes" : "no");
    printf("n_params       %lld (%.3f M)\n", (long long)in->n_params,
           (double)in->n_params / 1e6);
    printf("weight_bytes   %lld (%.2f MiB)\n", (long long)in->weight_bytes,
           (double)in->weight_bytes / (1024.0 * 1024.0));
    printf("file_size      %lld (%.2f MiB)\n", (long long)in->file_size,
           (double)in->file_size / (1024.0 * 1024.0));
    if (g) {
        int64_t n = gguf_n_tensors(g);
        printf("tensors        %lld\n", (long long)n);
        for (int64_t i = 0; i < n; i++) {
            const gguf_tensor_info *t = gguf_tensor(g, i);
            char shape[128];
            info_shape_str(t, shape, sizeof shape);
            printf("  %-32s %-6s %-24s %zu\n", t->name, quant_type_name(t->type),
                   shape, t->nbytes);
        }
    }
    return ferror(stdout) ? CLI_EXIT_FAIL : CLI_OK;
}

static int info_print_json(const moe_model_info *in, const gguf_ctx *g)
{
    cJSON *o = cJSON_CreateObject();
    char *s;
    if (!o)
        return cli_fail(info_cmd, CLI_EXIT_FAIL, "out of memory");
    cJSON_AddStringToObject(o, "name", in->name ? in->name : "");
    cJSON_AddStringToObject(o, "arch", in->arch ? in->arch : "");
    cJSON_AddStringToObject(o, "path", in->path ? in->path : "");
    cJSON_AddStringToObject(o, "ftype", in->ftype ? in->ftype : "");
    cJSON_AddNumberToObject(o, "n_vocab", in->n_vocab);
    cJSON_AddNumberToObject(o, "n_ctx_train", in->n_ctx_train);
    cJSON_AddNumberToObject(o, "n_embd", in->n_embd);
    cJSON_AddNumberToObject(o, "n_layer", in->n_layer);
    cJSON_AddNumberToObject(o, "n_head", in->n_head);
    cJSON_AddNumberToObject(o, "n_head_kv", in->n_head_kv);
    cJSON_AddNumberToObject(o, "n_embd_head", in->n_embd_head);
    cJSON_AddNumberToObject(o, "n_ff", in->n_ff);
    cJSON_AddNumberToObject(o, "n_expert", in->n_expert);
    cJSON_AddNumberToObject(o, "n_expert_used", in->n_expert_used);
    cJSON_AddNumberToObject(o, "n_ff_exp", in->n_ff_exp);
    cJSON_AddBoolToObject(o, "shared_expert", in->has_shared_expert);
    cJSON_AddNumberToObject(o, "n_params", (double)in->n_params);
    cJSON_AddNumberToObject(o, "weight_bytes", (double)in->weight_bytes);
    cJSON_AddNumberToObject(o, "file_size", (double)in->file_size);
    if (g) {
        cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
        for (int64_t i = 0; arr && i < gguf_n_tensors(g); i++) {
            const gguf_tensor_info *t = gguf_tensor(g, i);
            cJSON *to = cJSON_CreateObject();
            cJSON *shape = cJSON_CreateArray();
            if (!to || !shape) {
                cJSON_Delete(to);
                cJSON_Delete(shape);
                break;
            }
            cJSON_AddStringToObject(to, "name", t->name);
            cJSON_AddStringToObject(to, "type", quant_type_name(t->type));
            for (int d = 0; d < t->n_dims; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->ne[d]));
            cJSON_AddItemToObject(to, "shape", shape);
            cJSON_AddNumberToObject(to, "bytes", (double)t->nbytes);
            cJSON_AddItemToArray(arr, to);
        }
    }
    s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return cli_fail(info_cmd, CLI_EXIT_FAIL, "out of memory");
    printf("%s\n", s);
    free(s);
    return ferror(stdout) ? CLI_EXIT_FAIL : CLI_OK;
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"json", no_argument, NULL, 'j'},
        {"tensors", no_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    bool json = false, tensors = false;
    moe_model *model;
    moe_model_info info;
    gguf_ctx *g = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 'j': json = true; break;
        case 'T': tensors = true; break;
        case 'h': info_usage(stdout); return CLI_OK;
        default: return cli_bad_option(info_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(info_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'",
                        argv[optind]);
    if (!path)
        return cli_fail(info_cmd, CLI_EXIT_USAGE, "missing -m MODEL");

    model = cli_load_model_as(info_cmd, path, 1, MOE_LOAD_MMAP); /* metadata only */
    if (!model)
        return CLI_EXIT_FAIL;
    moe_model_get_info(model, &info);
    if (tensors) {
        moe_status st = gguf_open(path, &g);
        if (st != MOE_OK) {
            moe_model_free(model);
            return cli_fail_engine(info_cmd, st, "cannot read tensors of '%s'", path);
        }
    }
    rc = json ? info_print_json(&info, g) : info_print_text(&info, g);
    if (g)
        gguf_close(g);
    moe_model_free(model);
    return rc;
}
