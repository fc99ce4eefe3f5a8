"""Signed webhooks: a Pod job that ends (succeeded, failed, cancelled) is POSTed to a URL.

signing   the Standard Webhooks signature (https://www.standardwebhooks.com) and its secret
message   what is sent: the job's public view, or a reference to it when that is too large
sender    one delivery attempt under the fetch policy, and what its outcome means (retry or not)

The durable queue is the store's `webhooks` table (services/store/webhooks.py); the loop that
claims and delivers its rows runs in every API worker (services/api/webhooks.py).
"""
