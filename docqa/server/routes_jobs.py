"""/api/v1/jobs: list, read and cancel ingest jobs, and follow one's progress as server-sent events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from .jobs import TERMINAL
from .routes_common import SSE_HEADERS, ingest, jobs_of, sse, state_of


# ---------------------------------------------------------------------- jobs
@ingest.get("/jobs")
def list_jobs(request: Request, kb: str | None = None) -> dict[str, Any]:
    from .jobs import public_job

    state = state_of(request)
    rows = state.db.rows("SELECT * FROM jobs WHERE (? IS NULL OR kb = ?) ORDER BY created DESC LIMIT 100", (kb, kb))
    return {"jobs": [public_job(j) for j in rows]}


@ingest.get("/jobs/{job_id}")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return jobs_of(request).get(job_id)


@ingest.delete("/jobs/{job_id}")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return jobs_of(request).cancel(job_id)


@ingest.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str):
    jobs = jobs_of(request)
    first = await asyncio.to_thread(jobs.get, job_id)

    async def stream():
        last = None
        job = first
        while True:
            key = (job["status"], job["stage"], job["progress"], json.dumps(job["files"]))
            if key != last:
                yield sse("progress", job)
                last = key
            if job["status"] in TERMINAL:
                yield sse("done", job)
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            job = await asyncio.to_thread(jobs.get, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
