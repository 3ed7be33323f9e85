-- The Citus multi-tenant tutorial's schema, distributed by company: every key includes
-- company_id. Lives in schema `citus_ads` of the shared database (on the search path).
CREATE TABLE companies (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    image_url  text,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);

CREATE TABLE campaigns (
    id                    bigint NOT NULL,
    company_id            bigint NOT NULL REFERENCES companies (id),
    name                  text NOT NULL,
    cost_model            text NOT NULL,
    state                 text NOT NULL,
    monthly_budget        bigint,
    blacklisted_site_urls text[],
    created_at            timestamp without time zone NOT NULL,
    updated_at            timestamp without time zone NOT NULL,
    PRIMARY KEY (company_id, id)
);

CREATE TABLE ads (
    id                bigint NOT NULL,
    company_id        bigint NOT NULL,
    campaign_id       bigint NOT NULL,
    name              text NOT NULL,
    image_url         text,
    target_url        text,
    impressions_count bigint DEFAULT 0,
    clicks_count      bigint DEFAULT 0,
    created_at        timestamp without time zone NOT NULL,
    updated_at        timestamp without time zone NOT NULL,
    PRIMARY KEY (company_id, id),
    FOREIGN KEY (company_id, campaign_id) REFERENCES campaigns (company_id, id)
);
