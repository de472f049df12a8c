# The Django admin login through the proxy with a real browser-like client (requests: a
# cookie jar, redirects followed); a JSON summary on stdout. argv: base URL, user, password.
import json
import re
import sys

import requests

base, user, password = sys.argv[1:4]
s = requests.Session()
out = {}
r = s.get(base + "/catmaid/admin/", timeout=10)
out["redirects"] = [h.headers.get("Location") for h in r.history]
out["login_url"] = r.url
out["login_status"] = r.status_code
out["stylesheets"] = re.findall(r'href="([^"]*/base\.css)"', r.text)
token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text).group(1)
form = {"csrfmiddlewaretoken": token, "username": user, "password": password,
        "next": "/catmaid/admin/"}

# Without the CSRF cookie and token Django refuses the POST.
r = requests.post(r.url, data={"username": user, "password": password}, timeout=10,
                  allow_redirects=False)
out["without_csrf"] = r.status_code
# A wrong password: the form again.
r = s.post(out["login_url"], data=dict(form, password="wrong"), timeout=10,
           allow_redirects=False)
out["wrong_password"] = r.status_code
r = s.post(out["login_url"], data=form, timeout=10, allow_redirects=False)
out["login_post"] = r.status_code
out["login_location"] = r.headers.get("Location")
out["cookies"] = sorted(s.cookies.keys())
r = s.get(base + r.headers["Location"], timeout=10)
out["admin_status"] = r.status_code
out["logged_in"] = "Site administration" in r.text and user in r.text
print(json.dumps(out))
