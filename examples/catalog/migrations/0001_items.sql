-- catalog schema v1: the items the service stores.
CREATE TABLE IF NOT EXISTS items (
    id         bigserial PRIMARY KEY,
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_cents integer    NOT NULL DEFAULT 0 CHECK (price_cents >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
