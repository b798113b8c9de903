"""Model output written to attack the page: every way to run script or fetch from elsewhere.

Rendered by tests/test_rendering.py and streamed into Chromium by tests/test_browser.py.
"""

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<math><mi xlink:href='javascript:alert(1)'>x</mi></math>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="https://ok.example" onclick="x">ok</a>',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](  javascript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x](&#106;avascript:alert(1))",
    "[x](javascript&colon;alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    "[x](vbscript:msgbox)",
    "[x](file:///etc/passwd)",
    "[x](/relative/path) [y](//evil.example/) [z](#top)",
    '[x](https://ok.example "title" onmouseover="alert(1)")',
    "<javascript:alert(1)> <https://ok.example> <me@ok.example>",
    "[r]: javascript:alert(1)\n\n[x][r]",
    "![x](https://evil.example/p.png)",
    '![x](https://evil.example/p.png "t") ![y](data:image/png;base64,AAAA)',
    "![x][r]\n\n[r]: https://evil.example/t.png",
    "[![img](https://evil.example/a.png)](javascript:x)",
    "[![img](https://evil.example/a.png)](https://ok.example)",
    "<iframe src='https://evil.example'></iframe>",
    "<style>body { display: none }</style>",
    "<form action='https://evil.example'><input name=x><button formaction=x>go</button></form>",
    "<object data=x></object><embed src=x>",
    "<div style='position:fixed'>x</div>",
    "`<script>alert(1)</script>`",
    "```html\n<script>alert(1)</script>\n<img src=x onerror=alert(1)>\n```",
    "```\n<iframe src=x></iframe>\n```",
    "    <script>alert(1)</script>",
    "| a | b |\n|---|---|\n| <script>x</script> | <img src=x onerror=y> |\n"
    "| [x](javascript:y) | ok |",
    "**<script>alert(1)</script>**",
    "> <svg onload=alert(1)>\n> - <img src=x>",
    "<!-- comment --><details open ontoggle=alert(1)>",
    "a\u0000b <scr\u0000ipt>",
    "x" * 200_000,
    "> " * 2000 + "deep",
    "".join("  " * depth + "- item\n" for depth in range(400)),
    "[" * 5000 + "x" + "]" * 5000 + "(javascript:alert(1))",
    "*" * 10_000 + "a" + "_" * 10_000,
]

# The part small enough to stream through a browser test (the rest are size attacks).
STREAMABLE = HOSTILE[:38]
