/*
 * doc.c - the session document of the studio: per-token records with their
 * trace copies, turns, settings, model metadata, the display vocabulary and
 * the aggregates every view and export reads. No curses, no engine calls
 * beyond constants of moe.h.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "studio.h"

tui_tok *tui_tok_new(const tui_dims *d, bool traced)
{
    tui_tok *t = calloc(1, sizeof *t);
    size_t nl, ns, ne, nk, bytes;
    char *p;
    if (!t)
        return NULL;
    t->exit_layer = -1;
    if (!traced || !d || d->n_layer <= 0)
        return t;
    nl = (size_t)d->n_layer;
    ns = nl * (size_t)(d->n_sel > 0 ? d->n_sel : 0);
    ne = nl * (size_t)(d->n_expert > 0 ? d->n_expert : 0);
    nk = nl * (size_t)(d->lens_k > 0 ? d->lens_k : 0);
    /* floats/ints first (4-byte aligned), bools last */
    bytes = (ns * 2 + ne + nl * 2 + nk * 2) * 4 + nl;
    t->blob = calloc(1, bytes ? bytes : 1);
    if (!t->blob) {
        free(t);
        return NULL;
    }
    p = t->blob;
    t->sel = (int32_t *)(void *)p; p += ns * 4;
    t->sel_w = (float *)(void *)p; p += ns * 4;
    t->probs = (float *)(void *)p; p += ne * 4;
    t->hnorm = (float *)(void *)p; p += nl * 4;
    t->lens_entropy = (float *)(void *)p; p += nl * 4;
    t->lens_id = (int32_t *)(void *)p; p += nk * 4;
    t->lens_p = (float *)(void *)p; p += nk * 4;
    t->layer_moe = (bool *)(void *)p;
    for (size_t i = 0; i < ns; i++)
        t->sel[i] = -1;
    for (size_t i = 0; i < nk; i++)
        t->lens_id[i] = -1;
    t->traced = true;
    return t;
}

void tui_tok_free(tui_tok *t)
{
    if (!t)
        return;
    free(t->blob);
    free(t->text);
    free(t);
}

void tui_tok_set_trace(tui_tok *t, const tui_dims *d, const moe_trace_token *e)
{
    size_t nl = (size_t)d->n_layer;
    if (!t->traced || !e)
        return;
    t->pos = e->pos;
    t->exit_layer = e->exit_layer;
    for (size_t il = 0; il < nl; il++) {
        t->layer_moe[il] = e->layer_moe ? e->layer_moe[il] : false;
        t->hnorm[il] = e->hnorm ? e->hnorm[il] : 0.0f;
        t->lens_entropy[il] = e->lens_entropy ? e->lens_entropy[il] : 0.0f;
    }
    if (d->n_sel > 0 && e->sel) {
        memcpy(t->sel, e->sel, nl * (size_t)d->n_sel * sizeof *t->sel);
        memcpy(t->sel_w, e->sel_w, nl * (size_t)d->n_sel * sizeof *t->sel_w);
    }
    if (d->n_expert > 0 && e->router_probs)
        memcpy(t->probs, e->router_probs, nl * (size_t)d->n_expert * sizeof *t->probs);
    if (d->lens_k > 0 && e->lens_id) {
        memcpy(t->lens_id, e->lens_id, nl * (size_t)d->lens_k * sizeof *t->lens_id);
        memcpy(t->lens_p, e->lens_p, nl * (size_t)d->lens_k * sizeof *t->lens_p);
    }
}

void tui_meta_free(tui_meta *m)
{
    free(m->path);
    free(m->sha256);
    free(m->name);
    free(m->arch);
    free(m->ftype);
    memset(m, 0, sizeof *m);
}

void tui_settings_default(tui_settings *s)
{
    memset(s, 0, sizeof *s);
    s->sp = moe_sampler_default_params();
    s->n_ctx = 0;
    s->lens_k = 5;
    s->n_predict = 32;
    s->exit_spec = strdup("none");
}

bool tui_settings_copy(tui_settings *dst, const tui_settings *src)
{
    memset(dst, 0, sizeof *dst);
    dst->sp = src->sp;
    dst->n_ctx = src->n_ctx;
    dst->lens_k = src->lens_k;
    dst->n_predict = src->n_predict;
    dst->exit_spec = strdup(src->exit_spec ? src->exit_spec : "none");
    if (src->n_route > 0) {
        dst->route = calloc((size_t)src->n_route, sizeof *dst->route);
        if (!dst->route)
            return false;
        for (int32_t i = 0; i < src->n_route; i++)
            if ((dst->route[i] = strdup(src->route[i])))
                dst->n_route++;
    }
    return dst->exit_spec != NULL;
}

void tui_settings_free(tui_settings *s)
{
    free(s->exit_spec);
    for (int32_t i = 0; i < s->n_route; i++)
        free(s->route[i]);
    free(s->route);
    s->exit_spec = NULL;
    s->route = NULL;
    s->n_route = 0;
}

void tui_doc_init(tui_doc *d)
{
    memset(d, 0, sizeof *d);
    tui_settings_default(&d->set);
}

void tui_vocab_free(char **v, int32_t n)
{
    if (!v)
        return;
    for (int32_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void tui_doc_clear(tui_doc *d)
{
    for (int32_t i = 0; i < d->n_tok; i++)
        tui_tok_free(d->toks[i]);
    for (int32_t i = 0; i < d->n_turn; i++)
        free(d->turns[i].prompt);
    d->n_tok = 0;
    d->n_turn = 0;
}

void tui_doc_free(tui_doc *d)
{
    tui_doc_clear(d);
    free(d->toks);
    free(d->turns);
    tui_vocab_free(d->vocab, d->n_vocab);
    tui_meta_free(&d->meta);
    tui_settings_free(&d->set);
    memset(d, 0, sizeof *d);
}

bool tui_doc_append(tui_doc *d, tui_tok *t)
{
    if (d->n_tok == d->cap_tok) {
        int32_t cap = d->cap_tok ? d->cap_tok * 2 : 256;
        tui_tok **n = realloc(d->toks, (size_t)cap * sizeof *n);
        if (!n) {
            tui_tok_free(t);
            return false;
        }
        d->toks = n;
        d->cap_tok = cap;
    }
    t->index = d->n_tok;
    if (d->n_turn == 0 && !tui_doc_begin_turn(d, "")) {
        tui_tok_free(t);
        return false;
    }
    t->turn = d->n_turn - 1;
    d->toks[d->n_tok++] = t;
    if (t->sampled)
        d->turns[d->n_turn - 1].n_gen++;
    else
        d->turns[d->n_turn - 1].n_prompt++;
    return true;
}

bool tui_doc_begin_turn(tui_doc *d, const char *prompt)
{
    tui_turn *tn;
    if (d->n_turn == d->cap_turn) {
        int32_t cap = d->cap_turn ? d->cap_turn * 2 : 16;
        tui_turn *n = realloc(d->turns, (size_t)cap * sizeof *n);
        if (!n)
            return false;
        d->turns = n;
        d->cap_turn = cap;
    }
    tn = &d->turns[d->n_turn];
    memset(tn, 0, sizeof *tn);
    tn->prompt = strdup(prompt ? prompt : "");
    if (!tn->prompt)
        return false;
    tn->start = d->n_tok;
    d->n_turn++;
    return true;
}

void tui_doc_set_vocab(tui_doc *d, char **vocab, int32_t n)
{
    tui_vocab_free(d->vocab, d->n_vocab);
    d->vocab = vocab;
    d->n_vocab = vocab ? n : 0;
}

bool tui_doc_set_route(tui_doc *d, char **route, int32_t n)
{
    char **copy = NULL;
    if (n > 0) {
        copy = calloc((size_t)n, sizeof *copy);
        if (!copy)
            return false;
        for (int32_t i = 0; i < n; i++)
            if (!(copy[i] = strdup(route[i]))) {
                tui_vocab_free(copy, n);
                return false;
            }
    }
    for (int32_t i = 0; i < d->set.n_route; i++)
        free(d->set.route[i]);
    free(d->set.route);
    d->set.route = copy;
    d->set.n_route = n;
    return true;
}

const char *tui_doc_piece(const tui_doc *d, int32_t id, char *buf, size_t n)
{
    if (id >= 0 && id < d->n_vocab && d->vocab[id])
        return d->vocab[id];
    snprintf(buf, n, "#%d", (int)id);
    return buf;
}

void tui_doc_load(const tui_doc *d, bool gen_only, int64_t *load)
{
    const tui_dims *dm = &d->dims;
    size_t ne = (size_t)dm->n_layer * (size_t)(dm->n_expert > 0 ? dm->n_expert : 0);
    memset(load, 0, ne * sizeof *load);
    if (dm->n_expert <= 0)
        return;
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        if (!t->traced || (gen_only && !t->sampled))
            continue;
        for (int32_t il = 0; il < dm->n_layer; il++)
            for (int32_t s = 0; s < dm->n_sel; s++) {
                int32_t e = t->sel[(size_t)il * (size_t)dm->n_sel + (size_t)s];
                if (e >= 0 && e < dm->n_expert)
                    load[(size_t)il * (size_t)dm->n_expert + (size_t)e]++;
            }
    }
}

void tui_doc_stats(const tui_doc *d, tui_stats *s)
{
    double lp = 0, ex = 0;
    memset(s, 0, sizeof *s);
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        s->n_tokens++;
        if (t->sampled) {
            s->n_gen++;
            s->gen_ms += t->time_ms;
            lp += t->logprob;
        } else {
            s->n_prompt++;
        }
        if (t->traced) {
            s->n_traced++;
            ex += t->exit_layer;
        }
    }
    s->tok_s = s->gen_ms > 0 ? s->n_gen / (s->gen_ms / 1e3) : 0;
    s->mean_logprob = s->n_gen ? lp / s->n_gen : 0;
    s->perplexity = s->n_gen ? exp(-s->mean_logprob) : 0;
    s->mean_exit_layer = s->n_traced ? ex / s->n_traced : 0;
}

char *tui_sanitize(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    char *out = malloc(4 * len + 1);
    size_t o = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; p && i < len;) {
        size_t n = 0;
        unsigned char c = p[i];
        if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t') {
            n = 1;
        } else if (c >= 0xc2 && c <= 0xf4) {
            size_t want = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
            if (i + want <= len) {
                n = want;
                for (size_t j = 1; j < want; j++)
                    if ((p[i + j] & 0xc0) != 0x80)
                        n = 0;
                /* overlongs and surrogates */
                if (n == 3 && c == 0xe0 && p[i + 1] < 0xa0)
                    n = 0;
                if (n == 3 && c == 0xed && p[i + 1] >= 0xa0)
                    n = 0;
                if (n == 4 && c == 0xf0 && p[i + 1] < 0x90)
                    n = 0;
                if (n == 4 && c == 0xf4 && p[i + 1] >= 0x90)
                    n = 0;
            }
        }
        if (n) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
            i++;
        }
    }
    out[o] = '\0';
    return out;
}
