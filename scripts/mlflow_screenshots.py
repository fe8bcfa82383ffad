"""Screenshots of MLflow's UI with headless Chromium, driven over its DevTools protocol.

`python scripts/mlflow_screenshots.py JOBS.json`: JOBS is a list of {"url", "wait" (seconds),
"js" (expressions run after the wait, e.g. a click on a row's expander), "after", "out"}. A plain
`chromium --screenshot` cannot click; this is how docs/images/mlflow-*.png were taken (Debian's
chromium; aiohttp comes with Ray). MLflow 3.17's UI needs `?workflowType=machine_learning` in the
URL for its model-training mode (see docs/search.md).
"""

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request

import aiohttp

PORT = 9333

async def main(jobs, width=1400, height=900):
    proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--remote-debugging-port={PORT}", f"--window-size={width},{height}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json/list"))
                ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                break
            except Exception:
                time.sleep(0.3)
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            counter = [0]

            async def call(method, **params):
                counter[0] += 1
                mid = counter[0]
                await ws.send_json({"id": mid, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive()).data)
                    if msg.get("id") == mid:
                        return msg.get("result", msg)

            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            for job in jobs:
                await call("Page.navigate", url=job["url"])
                await asyncio.sleep(job.get("wait", 8))
                for js in job.get("js", []):
                    r = await call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
                    print(job["out"], "js ->", json.dumps(r.get("result", {}).get("value"))[:3000])
                    await asyncio.sleep(job.get("after", 4))
                if job.get("out"):
                    shot = await call("Page.captureScreenshot", format="png")
                    open(job["out"], "wb").write(base64.b64decode(shot["data"]))
                    print("wrote", job["out"])
    finally:
        proc.terminate()
        proc.wait(10)

if __name__ == "__main__":
    jobs = json.load(open(sys.argv[1]))
    asyncio.run(main(jobs))
