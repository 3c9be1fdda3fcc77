from __future__ import annotations

import httpx
from gridcharge.shared.http import Health, HttpServer, create_app
from gridcharge.shared.metrics import BUILD_INFO


async def test_metrics_healthz_readyz() -> None:
    BUILD_INFO.labels(service="test", version="0").set(1)
    health = Health()
    ready = {"v": False}
    health.add("dep", lambda: ready["v"])
    server = HttpServer(create_app("t", health), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            assert (await c.get("/healthz")).status_code == 200
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"] == {"dep": False}
            ready["v"] = True
            assert (await c.get("/readyz")).status_code == 200
            m = await c.get("/metrics")
            assert m.status_code == 200 and 'gridcharge_build_info{service="test",version="0"} 1.0' in m.text
    finally:
        await server.stop()
