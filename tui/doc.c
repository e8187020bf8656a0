/*
 * doc.c - the studio's names for the session document: thin wrappers over
 * the engine's session model (moe.h "sessions", engine/session.c), which
 * owns the records, turns, settings, metadata, vocabulary and aggregates.
 * No curses.
 */
#include "config.h"

#include "studio.h"

tui_tok *tui_tok_new(const tui_dims *d, bool traced)
{
    return moe_session_tok_new(d, traced);
}

void tui_tok_free(tui_tok *t)
{
    moe_session_tok_free(t);
}

void tui_tok_set_trace(tui_tok *t, const tui_dims *d, const moe_trace_token *e)
{
    moe_session_tok_set_trace(t, d, e);
}

void tui_meta_free(tui_meta *m)
{
    moe_session_meta_free(m);
}

void tui_settings_default(tui_settings *s)
{
    moe_session_settings_default(s);
}

bool tui_settings_copy(tui_settings *dst, const tui_settings *src)
{
    return moe_session_settings_copy(dst, src);
}

void tui_settings_free(tui_settings *s)
{
    moe_session_settings_free(s);
}

void tui_doc_init(tui_doc *d)
{
    moe_session_init(d);
}

void tui_vocab_free(char **v, int32_t n)
{
    moe_session_vocab_free(v, n);
}

void tui_doc_clear(tui_doc *d)
{
    moe_session_clear(d);
}

void tui_doc_free(tui_doc *d)
{
    moe_session_free(d);
}

bool tui_doc_append(tui_doc *d, tui_tok *t)
{
    return moe_session_append(d, t);
}

bool tui_doc_begin_turn(tui_doc *d, const char *prompt)
{
    return moe_session_begin_turn(d, prompt);
}

void tui_doc_set_vocab(tui_doc *d, char **vocab, int32_t n)
{
    moe_session_set_vocab(d, vocab, n);
}

bool tui_doc_set_route(tui_doc *d, char **route, int32_t n)
{
    return moe_session_set_route(d, route, n);
}

const char *tui_doc_piece(const tui_doc *d, int32_t id, char *buf, size_t n)
{
    return moe_session_piece(d, id, buf, n);
}

void tui_doc_load(const tui_doc *d, bool gen_only, int64_t *load)
{
    moe_session_load(d, gen_only, load);
}

void tui_doc_stats(const tui_doc *d, tui_stats *s)
{
    moe_session_stats_get(d, s);
}

char *tui_sanitize(const char *s, size_t len)
{
    return moe_session_sanitize(s, len);
}
