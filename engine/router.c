/*
 * router.c - routing decisions of MoE layers (see router.h). The one place
 * where logits become (expert, weight) lists, so the router lab can observe
 * and change every decision. Depends on model.h and trace.h only.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "router.h"
#include "trace.h"

void model_route(const model_hparams *hp, const float *logits, float *probs, int32_t *sel,
                 float *weight)
{
    const int32_t ne = hp->n_expert, k = hp->n_expert_used;
    float sum = 0.0f;
    if (hp->gate == GATE_SIGMOID) {
        for (int32_t e = 0; e < ne; e++)
            probs[e] = 1.0f / (1.0f + expf(-logits[e]));
    } else {
        float mx = -INFINITY, tot = 0.0f;
        for (int32_t e = 0; e < ne; e++)
            mx = logits[e] > mx ? logits[e] : mx;
        for (int32_t e = 0; e < ne; e++) {
            probs[e] = expf(logits[e] - mx);
            tot += probs[e];
        }
        for (int32_t e = 0; e < ne; e++)
            probs[e] /= tot;
    }
    /* top-k by probability, ties to the lower expert id */
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < ne; e++) {
            bool taken = false;
            for (int32_t i = 0; i < j; i++)
                taken |= sel[i] == e;
            if (!taken && (best < 0 || probs[e] > probs[best]))
                best = e;
        }
        sel[j] = best;
        weight[j] = probs[best];
        sum += probs[best];
    }
    if (hp->norm_topk && sum > 0.0f)
        for (int32_t j = 0; j < k; j++)
            weight[j] /= sum;
    for (int32_t j = 0; j < k; j++)
        weight[j] *= hp->expert_weights_scale;
}

void router_select(moe_ctx *c, int32_t il, int32_t n)
{
    const model_hparams *hp = &c->model->hp;
    const int32_t ne = hp->n_expert, k = hp->n_expert_used, ns = c->n_sel;
    for (int32_t t = 0; t < n; t++) {
        const float *lg = c->router_logits + (size_t)t * ne;
        float *pr = c->router_probs + (size_t)t * ne;
        int32_t *sel = c->sel + (size_t)t * ns;
        float *w = c->sel_w + (size_t)t * ns;
        model_route(hp, lg, pr, sel, w);
        for (int32_t j = k; j < ns; j++) {
            sel[j] = -1;
            w[j] = 0.0f;
        }
        c->n_sel_tok[t] = k;
    }
    if (c->trace)
        for (int32_t t = 0; t < n; t++) {
            trace_entry *e = trace_cur(c->trace, t);
            e->layer_moe[il] = true;
            memcpy(e->router_logits + (size_t)il * ne, c->router_logits + (size_t)t * ne,
                   (size_t)ne * sizeof(float));
            memcpy(e->router_probs + (size_t)il * ne, c->router_probs + (size_t)t * ne,
                   (size_t)ne * sizeof(float));
            memcpy(e->sel + (size_t)il * ns, c->sel + (size_t)t * ns, (size_t)ns * sizeof(int32_t));
            memcpy(e->sel_w + (size_t)il * ns, c->sel_w + (size_t)t * ns,
                   (size_t)ns * sizeof(float));
        }
}
