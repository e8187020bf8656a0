#!/bin/sh
# check_layering.sh - the engine must not include curses, readline or Lua
# headers; lua/ must not include tui/ headers.
src=${MOE_SRCDIR:-.}
bad=0
if grep -nE '#[[:space:]]*include[[:space:]]*[<"](n?curses|ncursesw/|readline/|lua|lauxlib|lualib|panel\.h)' \
        "$src"/engine/*.c "$src"/engine/*.h; then
    echo "FAIL: engine/ includes a curses, readline or Lua header"
    bad=1
fi
# cJSON only where sessions are written
if grep -lE '#[[:space:]]*include[[:space:]]*[<"](cjson/)?cJSON\.h' "$src"/engine/*.c "$src"/engine/*.h |
   grep -v '/engine/session\.c$'; then
    echo "FAIL: engine/ uses cJSON outside engine/session.c"
    bad=1
fi
if ls "$src"/lua/*.c >/dev/null 2>&1 &&
   grep -nE '#[[:space:]]*include[[:space:]]*"(tui|\.\./tui)/' "$src"/lua/*.c "$src"/lua/*.h 2>/dev/null; then
    echo "FAIL: lua/ includes a tui/ header"
    bad=1
fi
if grep -nE '\b(printf|puts|exit|abort)[[:space:]]*\(' "$src"/engine/*.c | grep -vE 'snprintf|vsnprintf|/\*'; then
    echo "FAIL: engine/ prints or exits"
    bad=1
fi
[ $bad -eq 0 ] && echo "layering: engine/ and lua/ include only what they may"
exit $bad
