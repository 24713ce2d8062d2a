"""Playlists by clustering the library: a cancellable background job (the work is in sidecar/clustering/).

    POST /api/clustering/start          -> 202 and the job (409 naming the running job if one runs)
    GET  /api/clustering                -> the recent jobs
    GET  /api/clustering/{job_id}       -> status, progress, best score so far, ETA; the playlists when done
    POST /api/clustering/{job_id}/cancel
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from schemas.clustering import ClusteringConflict, ClusteringJob, ClusteringJobList, ClusteringStart
from sidecar.clustering.jobs import library_for
from sidecar.http.common import json_response, parse_body, sidecar_of
from sidecar.http.openapi import documented

routes = web.RouteTableDef()


@routes.post("/api/clustering/start")
@documented(
    "Start clustering the library into playlists (a background job)", body=ClusteringStart, response=ClusteringJob, status=202,
    responses={409: ClusteringConflict},
)
async def start_clustering(request: web.Request) -> web.Response:
    req = await parse_body(request, ClusteringStart)
    sc = sidecar_of(request)
    model = sc.embedders.require(req.model)
    jobs = sc.clustering_jobs
    if (running := jobs.running) is not None:
        return json_response(ClusteringConflict(
            error=f"clustering job {running.job_id} is running; wait for it or cancel it (POST /api/clustering/{running.job_id}/cancel)",
            job_id=running.job_id,
        ), 409)
    job = jobs.reserve(model, req)  # before the first await: a second start now gets 409
    try:
        lib = await asyncio.to_thread(library_for, sc.catalog, sc.store, model, req)
    except BaseException:
        jobs.drop(job)
        raise
    jobs.start(job, lib, req)
    return json_response(job.snapshot(), 202)


@routes.get("/api/clustering")
@documented("Clustering jobs, newest first (without their playlists)", response=ClusteringJobList)
async def list_clustering(request: web.Request) -> web.Response:
    jobs = sidecar_of(request).clustering_jobs.newest_first()
    return json_response(ClusteringJobList(jobs=[j.snapshot().model_copy(update={"playlists": None}) for j in jobs]))


# not `start`: that path takes only POST, so GET there is a 405 (OpenAPI matches concrete paths before templates)
@routes.get("/api/clustering/{job_id:(?!start$)[^/]+}")
@documented("One clustering job, with its playlists when done", response=ClusteringJob, errors=(404,))
async def get_clustering(request: web.Request) -> web.Response:
    return json_response(sidecar_of(request).clustering_jobs.get(request.match_info["job_id"]).snapshot())


@routes.post("/api/clustering/{job_id}/cancel")
@documented("Cancel a running clustering job", response=ClusteringJob, errors=(404, 409))
async def cancel_clustering(request: web.Request) -> web.Response:
    job = sidecar_of(request).clustering_jobs.get(request.match_info["job_id"])
    job.stop()
    await asyncio.to_thread(job.join, 1.0)  # usually stops within one iteration; wait briefly so the answer says so
    return json_response(job.snapshot())
