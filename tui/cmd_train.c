/*
 * cmd_train.c - `moe-studio train`: train a small llama-family model (dense
 * or MoE) on a text file, continue or resume one, train only some bricks,
 * grow an expert, distil a teacher module into an expert (m2mKD), and
 * train a byte-level BPE vocabulary. Progress (loss, tokens/s, ETA) on
 * stderr, validation and routing statistics on stdout. Headless; uses the
 * engine API (moe.h "training") and cli helpers only.
 *
 * Data: the text is tokenized (documents separated by blank lines each get
 * a BOS first with --doc-bos), the last --val-frac of the tokens are held
 * out; step k trains on windows whose starts come from a generator seeded
 * by (seed, k), so a resumed run sees the same batches as an unbroken one.
 */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char train_cmd[] = "train";

enum {
    OPT_VOCAB = 256, OPT_VOCAB_SIZE, OPT_N_EMBD, OPT_N_LAYER, OPT_N_HEAD, OPT_N_HEAD_KV,
    OPT_N_FF, OPT_N_EXPERT, OPT_TOP_K, OPT_N_FF_EXP, OPT_CTX, OPT_SEED, OPT_UNWEIGHTED,
    OPT_NO_NORM_TOPK, OPT_UNTIED, OPT_NAME, OPT_DOC_BOS, OPT_VAL_FRAC, OPT_STEPS, OPT_BATCH,
    OPT_LR, OPT_LR_MIN, OPT_WARMUP, OPT_WD, OPT_CLIP, OPT_BETA2, OPT_BALANCE, OPT_ZLOSS, OPT_MI,
    OPT_TRAIN_ONLY, OPT_GROW, OPT_DISTILL_FROM, OPT_DISTILL_LAYER, OPT_DISTILL_EXPERT,
    OPT_SAVE_EVERY, OPT_EXPORT, OPT_EXPORT_TYPE, OPT_EVAL_EVERY, OPT_EVAL_WINDOWS, OPT_LOG_EVERY,
    OPT_MAX_TIME, OPT_INIT_STD, OPT_BPE_ONLY, OPT_STOP_AT,
};

static void train_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio train --text FILE -o OUT.gguf [options]\n"
            "       moe-studio train -m MODEL.gguf --text FILE -o OUT.gguf [options]\n"
            "       moe-studio train --bpe-only N --text FILE -o VOCAB.gguf\n"
            "\n"
            "Train a small llama-family model (dense or MoE) in f32 on the CPU. OUT is\n"
            "a GGUF the engine runs; OUT.opt beside it holds the optimizer state, so\n"
            "the same command with -m OUT resumes (batches depend only on seed and\n"
            "step). Progress on stderr; validation and routing on stdout.\n"
            "\n"
            "new model:\n"
            "      --vocab FILE       tokenizer from this GGUF (tokenizer.ggml.* keys)\n"
            "      --vocab-size N     else train a byte-level BPE vocabulary of N\n"
            "                         tokens on the text (written to OUT.vocab.gguf)\n"
            "      --n-embd N --n-layer N --n-head N --n-head-kv N  (128 4 4 2)\n"
            "      --n-expert N --top-k K --n-ff-exp N  (8 2 128; --n-expert 0: dense)\n"
            "      --n-ff N           dense FFN width (384)\n"
            "      --ctx N            training window and context length (128)\n"
            "      --unweighted       EMoE gating (selected experts summed, weight 1)\n"
            "      --no-norm-topk     keep selected probabilities (no renormalising)\n"
            "      --untied           separate LM head (default: tied to the embedding)\n"
            "      --init-std X       std of initial matrices (0.02)\n"
            "      --name NAME        general.name\n"
            "continue:\n"
            "  -m, --model FILE       start from this model (and FILE.opt if present)\n"
            "      --train-only SPEC  train only these bricks, comma separated: all embd\n"
            "                         output blk.N blk.N.attn blk.N.ffn blk.N.router\n"
            "                         blk.N.router.E blk.N.expert.E (N may be *)\n"
            "      --grow SRC[:NOISE] add an expert to every MoE layer, a copy of\n"
            "                         expert SRC plus noise (0.01), and train only it\n"
            "      --distill-from T   m2mKD: train expert --distill-expert E of layer\n"
            "                         --distill-layer L[:LT] to reproduce the FFN block\n"
            "                         of teacher layer LT (default L) of model T\n"
            "data:\n"
            "      --text FILE        training text (UTF-8)\n"
            "      --doc-bos          a BOS before each blank-line separated document\n"
            "      --val-frac X       held-out tail for validation (0.05)\n"
            "optimizer:\n"
            "      --steps N          total optimizer steps (1000); schedule length\n"
            "      --batch N          sequences per step (8)\n"
            "      --lr X --lr-min X  peak and final learning rate (3e-3, 3e-4)\n"
            "      --warmup N         warm-up steps (100)\n"
            "      --wd X --clip X --beta2 X   (0.1, 1.0, 0.95)\n"
            "      --balance W --zloss W --mi W  MoE loss weights (0.01, 0.001, 0)\n"
            "      --seed N           initialisation and batches (1)\n"
            "output:\n"
            "  -o, --output FILE      checkpoint (f32) + FILE.opt\n"
            "      --save-every N     checkpoint every N steps (0: at the end only)\n"
            "      --export FILE      also write the final model here ...\n"
            "      --export-type T    ... as f32, f16 or q8_0 (f32)\n"
            "      --eval-every N     validation every N steps (0: at the end)\n"
            "      --eval-windows N   validation windows of --ctx tokens (16)\n"
            "      --log-every N      progress line every N steps (10)\n"
            "      --max-time S       stop (and save) after S seconds\n"
            "      --stop-at N        stop (and save) after step N (resume later)\n"
            "  -t, --threads N        BLAS threads (1; more rarely pays at these sizes)\n"
            "  -q, --quiet            no progress lines\n"
            "  -h, --help             this help\n");
}

typedef struct {
    int32_t *tok;
    int64_t n, n_train; /* tokens; the first n_train train, the rest validate */
} train_data;

static uint64_t tr_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static bool tokenize_text(moe_trainer *t, const char *text, size_t len, bool doc_bos,
                          train_data *d)
{
    size_t cap = len + len / 2 + 16, pos = 0; /* tokens <= bytes, + a BOS per doc */
    const int32_t bos = moe_trainer_bos(t);
    d->n = 0;
    d->tok = NULL;
    if (len > ((size_t)1 << 30)) {
        cli_fail(train_cmd, CLI_EXIT_FAIL, "the text is over 1 GiB");
        return false;
    }
    d->tok = malloc(cap * sizeof *d->tok);
    if (!d->tok) {
        cli_fail(train_cmd, CLI_EXIT_FAIL, "out of memory");
        return false;
    }
    while (pos < len) {
        /* one document (doc_bos) or one chunk of lines */
        size_t end;
        int32_t got;
        if (doc_bos) {
            const char *sep = strstr(text + pos, "\n\n");
            end = sep ? (size_t)(sep - text) + 2 : len;
        } else {
            end = pos + 65536 < len ? pos + 65536 : len;
            while (end < len && text[end - 1] != '\n')
                end++;
        }
        if (doc_bos && bos >= 0)
            d->tok[d->n++] = bos;
        got = moe_trainer_tokenize(t, text + pos, end - pos, d->tok + d->n,
                                   (int32_t)(cap - (size_t)d->n));
        if (got < 0) {
            cli_fail_engine(train_cmd, MOE_ERR_NOMEM, "tokenizing the text");
            return false;
        }
        d->n += got;
        pos = end;
        while (doc_bos && pos < len && text[pos] == '\n')
            pos++;
    }
    return true;
}

static void fmt_time(char *buf, size_t n, double s)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, n, "?");
    else if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

/* validation: n_win windows of T tokens from the held-out tail */
static bool evaluate(moe_trainer *t, const train_data *d, int32_t T, int n_win,
                     moe_train_stats *out, int *used)
{
    const int64_t n_val = d->n - d->n_train;
    double ce = 0, bal = 0;
    int w = 0;
    moe_trainer_route_reset(t);
    for (; w < n_win && (int64_t)(w + 1) * T + 1 <= n_val; w++) {
        moe_train_stats st;
        moe_status s = moe_trainer_eval(t, d->tok + d->n_train + (int64_t)w * T, 1, T, &st);
        if (s != MOE_OK) {
            cli_fail_engine(train_cmd, s, "validation");
            return false;
        }
        ce += st.ce;
        bal += st.balance;
    }
    memset(out, 0, sizeof *out);
    if (w > 0) {
        out->ce = ce / w;
        out->balance = bal / w;
    }
    *used = w;
    return true;
}

static void print_routing(moe_trainer *t)
{
    moe_train_config c;
    moe_trainer_get_config(t, &c);
    if (c.n_expert <= 0)
        return;
    printf("routing on the validation windows (share of assignments per expert):\n");
    for (int il = 0; il < c.n_layer; il++) {
        double frac[512], h = 0, mx = 0, mn = 1, cv = 0, mean = 1.0 / c.n_expert;
        if (c.n_expert > 512 || moe_trainer_route_load(t, il, frac) != MOE_OK)
            continue;
        printf("  layer %d:", il);
        for (int e = 0; e < c.n_expert; e++) {
            printf(" %.3f", frac[e]);
            if (frac[e] > 0)
                h -= frac[e] * log(frac[e]);
            mx = frac[e] > mx ? frac[e] : mx;
            mn = frac[e] < mn ? frac[e] : mn;
            cv += (frac[e] - mean) * (frac[e] - mean);
        }
        cv = cv / c.n_expert / (mean * mean);
        printf("  | cv2 %.3f  entropy %.3f of %.3f nats  max/min %.3f/%.3f\n", cv, h,
               log((double)c.n_expert), mx, mn);
    }
}

static int parse_type(const char *s)
{
    if (strcmp(s, "f32") == 0)
        return 0;
    if (strcmp(s, "f16") == 0)
        return 1;
    if (strcmp(s, "q8_0") == 0)
        return 8;
    return -1;
}

int cmd_train(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"output", required_argument, NULL, 'o'},
        {"threads", required_argument, NULL, 't'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"text", required_argument, NULL, 'x'},
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"vocab-size", required_argument, NULL, OPT_VOCAB_SIZE},
        {"bpe-only", required_argument, NULL, OPT_BPE_ONLY},
        {"n-embd", required_argument, NULL, OPT_N_EMBD},
        {"n-layer", required_argument, NULL, OPT_N_LAYER},
        {"n-head", required_argument, NULL, OPT_N_HEAD},
        {"n-head-kv", required_argument, NULL, OPT_N_HEAD_KV},
        {"n-ff", required_argument, NULL, OPT_N_FF},
        {"n-expert", required_argument, NULL, OPT_N_EXPERT},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"n-ff-exp", required_argument, NULL, OPT_N_FF_EXP},
        {"ctx", required_argument, NULL, OPT_CTX},
        {"seed", required_argument, NULL, OPT_SEED},
        {"unweighted", no_argument, NULL, OPT_UNWEIGHTED},
        {"no-norm-topk", no_argument, NULL, OPT_NO_NORM_TOPK},
        {"untied", no_argument, NULL, OPT_UNTIED},
        {"init-std", required_argument, NULL, OPT_INIT_STD},
        {"name", required_argument, NULL, OPT_NAME},
        {"doc-bos", no_argument, NULL, OPT_DOC_BOS},
        {"val-frac", required_argument, NULL, OPT_VAL_FRAC},
        {"steps", required_argument, NULL, OPT_STEPS},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"lr", required_argument, NULL, OPT_LR},
        {"lr-min", required_argument, NULL, OPT_LR_MIN},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"wd", required_argument, NULL, OPT_WD},
        {"clip", required_argument, NULL, OPT_CLIP},
        {"beta2", required_argument, NULL, OPT_BETA2},
        {"balance", required_argument, NULL, OPT_BALANCE},
        {"zloss", required_argument, NULL, OPT_ZLOSS},
        {"mi", required_argument, NULL, OPT_MI},
        {"train-only", required_argument, NULL, OPT_TRAIN_ONLY},
        {"grow", required_argument, NULL, OPT_GROW},
        {"distill-from", required_argument, NULL, OPT_DISTILL_FROM},
        {"distill-layer", required_argument, NULL, OPT_DISTILL_LAYER},
        {"distill-expert", required_argument, NULL, OPT_DISTILL_EXPERT},
        {"save-every", required_argument, NULL, OPT_SAVE_EVERY},
        {"export", required_argument, NULL, OPT_EXPORT},
        {"export-type", required_argument, NULL, OPT_EXPORT_TYPE},
        {"eval-every", required_argument, NULL, OPT_EVAL_EVERY},
        {"eval-windows", required_argument, NULL, OPT_EVAL_WINDOWS},
        {"log-every", required_argument, NULL, OPT_LOG_EVERY},
        {"max-time", required_argument, NULL, OPT_MAX_TIME},
        {"stop-at", required_argument, NULL, OPT_STOP_AT},
        {NULL, 0, NULL, 0},
    };
    moe_train_config cfg = moe_train_default_config();
    moe_train_params par = moe_train_default_params();
    const char *model_path = NULL, *out_path = NULL, *text_path = NULL, *vocab = NULL;
    const char *train_only = NULL, *grow = NULL, *distill_from = NULL, *distill_layer = NULL;
    const char *export_path = NULL, *name = NULL;
    int vocab_size = 0, bpe_only = 0, batch = 8, save_every = 0, eval_every = 0,
        eval_windows = 16, log_every = 10, distill_expert = -1, export_type = 0, steps = 1000,
        stop_at = 0;
    int ctx = 128;
    float val_frac = 0.05f, max_time = 0, f;
    bool quiet = false, doc_bos = false, dummy = false;
    bool set_lr = false, set_lr_min = false, set_warmup = false, set_steps = false,
         set_wd = false, set_clip = false, set_beta2 = false, set_bal = false, set_z = false,
         set_mi = false;
    uint64_t seed = 1;
    char *text = NULL, vocab_buf[4096];
    size_t text_len = 0;
    moe_trainer *t = NULL, *teacher = NULL;
    train_data d = {0};
    int rc = CLI_EXIT_FAIL, c, iv;
    moe_status st;
    float *dx = NULL, *dy = NULL;

    opterr = 0;
    cfg.n_ctx_train = ctx;
    while ((c = getopt_long(argc, argv, ":m:o:t:qhx:", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'x': text_path = optarg; break;
        case 'q': quiet = true; break;
        case 'h': train_usage(stdout); return 0;
        case 't':
            if (!cli_parse_int(train_cmd, "--threads", optarg, 1, 64, &par.n_threads))
                return CLI_EXIT_USAGE;
            break;
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_NAME: name = optarg; break;
        case OPT_TRAIN_ONLY: train_only = optarg; break;
        case OPT_GROW: grow = optarg; break;
        case OPT_DISTILL_FROM: distill_from = optarg; break;
        case OPT_DISTILL_LAYER: distill_layer = optarg; break;
        case OPT_EXPORT: export_path = optarg; break;
        case OPT_UNWEIGHTED: cfg.unweighted = true; break;
        case OPT_NO_NORM_TOPK: cfg.norm_topk = false; break;
        case OPT_UNTIED: cfg.tied_output = false; break;
        case OPT_DOC_BOS: doc_bos = true; break;
        case OPT_EXPORT_TYPE:
            if ((export_type = parse_type(optarg)) < 0)
                return cli_fail(train_cmd, CLI_EXIT_USAGE,
                                "--export-type must be f32, f16 or q8_0, not '%s'", optarg);
            break;
        case OPT_SEED:
            if (!cli_parse_u64(train_cmd, "--seed", optarg, &seed))
                return CLI_EXIT_USAGE;
            cfg.seed = seed;
            break;
#define INT_OPT(code, nm, lo, hi, dst)                                          \
    case code:                                                                  \
        if (!cli_parse_int(train_cmd, nm, optarg, lo, hi, &iv))                 \
            return CLI_EXIT_USAGE;                                              \
        dst = iv;                                                               \
        break;
            INT_OPT(OPT_VOCAB_SIZE, "--vocab-size", 257, 1 << 20, vocab_size)
            INT_OPT(OPT_BPE_ONLY, "--bpe-only", 257, 1 << 20, bpe_only)
            INT_OPT(OPT_N_EMBD, "--n-embd", 2, 16384, cfg.n_embd)
            INT_OPT(OPT_N_LAYER, "--n-layer", 1, 256, cfg.n_layer)
            INT_OPT(OPT_N_HEAD, "--n-head", 1, 1024, cfg.n_head)
            INT_OPT(OPT_N_HEAD_KV, "--n-head-kv", 1, 1024, cfg.n_head_kv)
            INT_OPT(OPT_N_FF, "--n-ff", 1, 1 << 20, cfg.n_ff)
            INT_OPT(OPT_N_EXPERT, "--n-expert", 0, 512, cfg.n_expert)
            INT_OPT(OPT_TOP_K, "--top-k", 1, 64, cfg.n_expert_used)
            INT_OPT(OPT_N_FF_EXP, "--n-ff-exp", 1, 1 << 20, cfg.n_ff_exp)
            INT_OPT(OPT_CTX, "--ctx", 2, 8192, ctx)
            INT_OPT(OPT_STEPS, "--steps", 1, 100000000, steps)
            INT_OPT(OPT_BATCH, "--batch", 1, 4096, batch)
            INT_OPT(OPT_WARMUP, "--warmup", 0, 100000000, par.warmup)
            INT_OPT(OPT_SAVE_EVERY, "--save-every", 0, 100000000, save_every)
            INT_OPT(OPT_EVAL_EVERY, "--eval-every", 0, 100000000, eval_every)
            INT_OPT(OPT_EVAL_WINDOWS, "--eval-windows", 0, 1000000, eval_windows)
            INT_OPT(OPT_LOG_EVERY, "--log-every", 1, 100000000, log_every)
            INT_OPT(OPT_DISTILL_EXPERT, "--distill-expert", 0, 511, distill_expert)
            INT_OPT(OPT_STOP_AT, "--stop-at", 0, 100000000, stop_at)
#undef INT_OPT
#define FLT_OPT(code, nm, lo, hi, dst, flag)                                    \
    case code:                                                                  \
        if (!cli_parse_float(train_cmd, nm, optarg, lo, hi, &f))                \
            return CLI_EXIT_USAGE;                                              \
        dst = f;                                                                \
        flag = true;                                                            \
        break;
            FLT_OPT(OPT_LR, "--lr", 0, 10, par.lr, set_lr)
            FLT_OPT(OPT_LR_MIN, "--lr-min", 0, 10, par.lr_min, set_lr_min)
            FLT_OPT(OPT_WD, "--wd", 0, 10, par.weight_decay, set_wd)
            FLT_OPT(OPT_CLIP, "--clip", 0, 1e6, par.grad_clip, set_clip)
            FLT_OPT(OPT_BETA2, "--beta2", 0, 0.99999, par.beta2, set_beta2)
            FLT_OPT(OPT_BALANCE, "--balance", 0, 100, par.w_balance, set_bal)
            FLT_OPT(OPT_ZLOSS, "--zloss", 0, 100, par.w_zloss, set_z)
            FLT_OPT(OPT_MI, "--mi", 0, 100, par.w_mi, set_mi)
            FLT_OPT(OPT_VAL_FRAC, "--val-frac", 0, 0.5, val_frac, dummy)
            FLT_OPT(OPT_MAX_TIME, "--max-time", 0, 1e9, max_time, dummy)
            FLT_OPT(OPT_INIT_STD, "--init-std", 0, 10, cfg.init_std, dummy)
#undef FLT_OPT
        default:
            return cli_bad_option(train_cmd, c, argv);
        }
        if (c == OPT_WARMUP)
            set_warmup = true;
        if (c == OPT_STEPS)
            set_steps = true;
    }
    (void)dummy;
    if (optind < argc)
        return cli_fail(train_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!text_path)
        return cli_fail(train_cmd, CLI_EXIT_USAGE, "no training text (--text FILE)");
    if (!out_path)
        return cli_fail(train_cmd, CLI_EXIT_USAGE, "no output file (-o FILE)");
    if (distill_from && (!model_path || !distill_layer || distill_expert < 0))
        return cli_fail(train_cmd, CLI_EXIT_USAGE,
                        "--distill-from needs -m STUDENT, --distill-layer and --distill-expert");
    cfg.n_ctx_train = ctx;
    par.n_steps = steps;
    if (!set_warmup && steps < 10 * par.warmup)
        par.warmup = steps / 10;

    text = cli_read_file(train_cmd, text_path, &text_len);
    if (!text)
        return CLI_EXIT_FAIL;

    if (bpe_only) {
        st = moe_bpe_train(text, text_len, bpe_only, out_path, NULL, NULL);
        free(text);
        if (st != MOE_OK)
            return cli_fail_engine(train_cmd, st, "training the BPE vocabulary");
        printf("wrote %s\n", out_path);
        return 0;
    }

    /* the model */
    if (model_path) {
        if ((st = moe_trainer_load(model_path, &t)) != MOE_OK) {
            cli_fail_engine(train_cmd, st, "loading %s", model_path);
            goto done;
        }
        /* options given on the command line override a resumed state */
        {
            moe_train_params cur;
            moe_trainer_get_params(t, &cur);
            cur.n_threads = par.n_threads;
            if (set_steps) cur.n_steps = par.n_steps;
            if (set_lr) cur.lr = par.lr;
            if (set_lr_min) cur.lr_min = par.lr_min;
            if (set_warmup) cur.warmup = par.warmup;
            if (set_wd) cur.weight_decay = par.weight_decay;
            if (set_clip) cur.grad_clip = par.grad_clip;
            if (set_beta2) cur.beta2 = par.beta2;
            if (set_bal) cur.w_balance = par.w_balance;
            if (set_z) cur.w_zloss = par.w_zloss;
            if (set_mi) cur.w_mi = par.w_mi;
            par = cur;
        }
    } else {
        if (!vocab) {
            if (!vocab_size) {
                cli_fail(train_cmd, CLI_EXIT_USAGE,
                         "a new model needs --vocab FILE or --vocab-size N");
                rc = CLI_EXIT_USAGE;
                goto done;
            }
            snprintf(vocab_buf, sizeof vocab_buf, "%s.vocab.gguf", out_path);
            if (!quiet)
                fprintf(stderr, "training a %d-token BPE vocabulary ...\n", vocab_size);
            if ((st = moe_bpe_train(text, text_len, vocab_size, vocab_buf, NULL, NULL)) !=
                MOE_OK) {
                cli_fail_engine(train_cmd, st, "training the BPE vocabulary");
                goto done;
            }
            vocab = vocab_buf;
        }
        cfg.name = name;
        if ((st = moe_trainer_new(&cfg, vocab, &t)) != MOE_OK) {
            cli_fail_engine(train_cmd, st, "creating the model");
            goto done;
        }
    }
    if (name && (st = moe_trainer_set_name(t, name)) != MOE_OK) {
        cli_fail_engine(train_cmd, st, "--name");
        goto done;
    }
    if ((st = moe_trainer_set_params(t, &par)) != MOE_OK) {
        cli_fail_engine(train_cmd, st, "optimizer settings");
        goto done;
    }
    if (grow) {
        char *end;
        long src = strtol(grow, &end, 10);
        double noise = 0.01;
        if (end == grow || (*end && *end != ':') || (*end == ':' && (noise = strtod(end + 1, NULL)) < 0)) {
            cli_fail(train_cmd, CLI_EXIT_USAGE, "--grow takes SRC[:NOISE], not '%s'", grow);
            rc = CLI_EXIT_USAGE;
            goto done;
        }
        if ((st = moe_trainer_grow(t, (int32_t)src, (float)noise, seed)) != MOE_OK) {
            cli_fail_engine(train_cmd, st, "growing an expert");
            goto done;
        }
    }
    if (train_only && (st = moe_trainer_set_trainable(t, train_only)) != MOE_OK) {
        cli_fail_engine(train_cmd, st, "--train-only");
        rc = CLI_EXIT_USAGE;
        goto done;
    }

    /* the data */
    if (!tokenize_text(t, text, text_len, doc_bos, &d))
        goto done;
    d.n_train = d.n - (int64_t)((double)d.n * val_frac);
    if (d.n_train < ctx + 2) {
        cli_fail(train_cmd, CLI_EXIT_FAIL, "the text has %lld tokens: too few for --ctx %d",
                 (long long)d.n, ctx);
        goto done;
    }
    {
        moe_train_config mc;
        moe_trainer_get_config(t, &mc);
        if (!quiet)
            fprintf(stderr,
                    "model: %d layers, n_embd %d, %d heads (%d kv), %s, vocab %d, %lld params "
                    "(%lld trainable)\ndata: %lld tokens (%lld train, %lld validation)\n",
                    mc.n_layer, mc.n_embd, mc.n_head, mc.n_head_kv,
                    mc.n_expert ? "MoE" : "dense", mc.n_vocab,
                    (long long)moe_trainer_n_params(t, false),
                    (long long)moe_trainer_n_params(t, true), (long long)d.n,
                    (long long)d.n_train, (long long)(d.n - d.n_train));
        if (distill_from) {
            long ls, lt;
            char *end;
            ls = strtol(distill_layer, &end, 10);
            lt = *end == ':' ? strtol(end + 1, NULL, 10) : ls;
            if ((st = moe_trainer_load(distill_from, &teacher)) != MOE_OK) {
                cli_fail_engine(train_cmd, st, "loading the teacher %s", distill_from);
                goto done;
            }
            moe_trainer_set_params(teacher, &par);
            dx = malloc((size_t)ctx * (size_t)mc.n_embd * sizeof *dx);
            dy = malloc((size_t)ctx * (size_t)mc.n_embd * sizeof *dy);
            if (!dx || !dy) {
                cli_fail(train_cmd, CLI_EXIT_FAIL, "out of memory");
                goto done;
            }
            {
                moe_train_config tc;
                moe_trainer_get_config(teacher, &tc);
                if (tc.n_embd != mc.n_embd || lt < 0 || lt >= tc.n_layer || ls < 0 ||
                    ls >= mc.n_layer) {
                    cli_fail(train_cmd, CLI_EXIT_USAGE,
                             "teacher and student must share n_embd, and the layers must exist");
                    rc = CLI_EXIT_USAGE;
                    goto done;
                }
            }
            /* distillation loop: one window per step */
            {
                const double t0 = cli_now();
                moe_train_stats s = {0};
                int64_t k0 = moe_trainer_step_count(t);
                for (int64_t k = k0; k < steps; k++) {
                    uint64_t r = tr_mix(seed * 0x100000001b3ULL + (uint64_t)k);
                    int64_t start = (int64_t)(r % (uint64_t)(d.n_train - ctx));
                    if ((st = moe_trainer_module_io(teacher, d.tok + start, ctx, (int32_t)lt,
                                                    dx, dy)) != MOE_OK ||
                        (st = moe_trainer_distill_step(t, (int32_t)ls, distill_expert, dx, dy,
                                                       ctx, &s)) != MOE_OK) {
                        cli_fail_engine(train_cmd, st, "distillation step %lld", (long long)k);
                        goto done;
                    }
                    if (!quiet && ((k + 1) % log_every == 0 || k + 1 == steps))
                        fprintf(stderr, "distill step %lld/%d  mse %.5f  %.0f tok/s\n",
                                (long long)(k + 1), steps, s.loss,
                                (double)(k + 1 - k0) * ctx / (cli_now() - t0));
                }
                printf("distilled layer %ld expert %d from %s layer %ld: final mse %.5f\n", ls,
                       distill_expert, distill_from, lt, s.loss);
            }
            goto save;
        }
    }

    /* training loop */
    {
        const int64_t k0 = moe_trainer_step_count(t);
        const double t0 = cli_now();
        int32_t *batch_tok = malloc((size_t)batch * (size_t)(ctx + 1) * sizeof *batch_tok);
        moe_train_stats s = {0}, v;
        double ema = -1;
        int used;
        if (!batch_tok) {
            cli_fail(train_cmd, CLI_EXIT_FAIL, "out of memory");
            goto done;
        }
        if (k0 >= steps && !quiet)
            fprintf(stderr, "already at step %lld of %d: nothing to train\n", (long long)k0,
                    steps);
        for (int64_t k = k0; k < steps; k++) {
            for (int b = 0; b < batch; b++) {
                uint64_t r = tr_mix(tr_mix(seed * 0x100000001b3ULL + (uint64_t)k) + (uint64_t)b);
                int64_t start = (int64_t)(r % (uint64_t)(d.n_train - ctx - 1));
                memcpy(batch_tok + (size_t)b * (size_t)(ctx + 1), d.tok + start,
                       (size_t)(ctx + 1) * sizeof(int32_t));
            }
            if ((st = moe_trainer_step(t, batch_tok, batch, ctx, &s)) != MOE_OK) {
                cli_fail_engine(train_cmd, st, "step %lld", (long long)k);
                free(batch_tok);
                goto done;
            }
            ema = ema < 0 ? s.ce : 0.95 * ema + 0.05 * s.ce;
            if (!quiet && ((k + 1) % log_every == 0 || k + 1 == steps)) {
                const double el = cli_now() - t0;
                const double tps = (double)(k + 1 - k0) * batch * ctx / el;
                char eta[32], els[32];
                fmt_time(eta, sizeof eta, el / (double)(k + 1 - k0) * (double)(steps - k - 1));
                fmt_time(els, sizeof els, el);
                fprintf(stderr,
                        "step %lld/%d  loss %.4f  ce %.4f (avg %.4f)  bal %.3f z %.2f mi %.3f  "
                        "lr %.2e  |g| %.2f  %.0f tok/s  %s elapsed  ETA %s\n",
                        (long long)(k + 1), steps, s.loss, s.ce, ema, s.balance, s.zloss, s.mi,
                        s.lr, s.grad_norm, tps, els, eta);
            }
            if (eval_every > 0 && (k + 1) % eval_every == 0 && k + 1 < steps) {
                if (!evaluate(t, &d, ctx, eval_windows, &v, &used)) {
                    free(batch_tok);
                    goto done;
                }
                if (used > 0)
                    printf("step %lld  val ce %.4f  ppl %.2f  (%d windows)\n",
                           (long long)(k + 1), v.ce, exp(v.ce), used);
                fflush(stdout);
            }
            if (save_every > 0 && (k + 1) % save_every == 0 && k + 1 < steps &&
                (st = moe_trainer_save(t, out_path, 0, true)) != MOE_OK) {
                cli_fail_engine(train_cmd, st, "saving %s", out_path);
                free(batch_tok);
                goto done;
            }
            if (stop_at > 0 && k + 1 >= stop_at && k + 1 < steps) {
                if (!quiet)
                    fprintf(stderr, "--stop-at: stopping at step %lld\n", (long long)(k + 1));
                break;
            }
            if (max_time > 0 && cli_now() - t0 > max_time) {
                if (!quiet)
                    fprintf(stderr, "--max-time reached at step %lld\n", (long long)(k + 1));
                break;
            }
        }
        free(batch_tok);
        {
            const double el = cli_now() - t0;
            const int64_t done_steps = moe_trainer_step_count(t) - k0;
            printf("trained %lld steps (%lld tokens) in %.1f s: %.0f tokens/s; now at step "
                   "%lld\n",
                   (long long)done_steps, (long long)done_steps * batch * ctx, el,
                   el > 0 ? (double)done_steps * batch * ctx / el : 0.0,
                   (long long)moe_trainer_step_count(t));
        }
        if (!evaluate(t, &d, ctx, eval_windows, &v, &used))
            goto done;
        if (used > 0) {
            printf("validation: ce %.4f nats/token, perplexity %.2f (%d windows of %d tokens)\n",
                   v.ce, exp(v.ce), used, ctx);
            print_routing(t);
        }
    }
save:
    if ((st = moe_trainer_save(t, out_path, 0, true)) != MOE_OK) {
        cli_fail_engine(train_cmd, st, "saving %s", out_path);
        goto done;
    }
    printf("wrote %s (+ %s.opt)\n", out_path, out_path);
    if (export_path) {
        if ((st = moe_trainer_save(t, export_path, export_type, false)) != MOE_OK) {
            cli_fail_engine(train_cmd, st, "exporting %s", export_path);
            goto done;
        }
        printf("exported %s\n", export_path);
    }
    rc = 0;
done:
    free(dx);
    free(dy);
    free(d.tok);
    free(text);
    moe_trainer_free(teacher);
    moe_trainer_free(t);
    return rc;
}
