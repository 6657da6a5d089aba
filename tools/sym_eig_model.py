"""A NumPy model of kernels/svdq/sym_eig.cu's algorithm, in fp32, for checking it without a GPU:
the same round-robin pairs, the same skip rule (1e-6 of the Frobenius norm, or below fp32's
resolution of the diagonal pair), row and column passes, then Rutishauser's exact 2 x 2 update of
each rotated pair, sweeps until one rotates nothing. Against numpy.linalg.eigh in fp64 on the GPU
test's kind of matrices (Gram matrices of keys with a decaying spectrum, and a rank-deficient
one), it prints sweeps, eigenvalue error, orthonormality and residual.

  .venv/bin/python tools/sym_eig_model.py
"""
import numpy as np

def jacobi(A, tol=1e-6, max_sweeps=20):
    N=A.shape[0]; H=N//2
    a=A.astype(np.float32).copy(); v=np.eye(N,dtype=np.float32)
    floor=np.float32(tol)*np.sqrt(np.float32((a*a).sum()))
    sweeps=0
    for sweep in range(max_sweeps):
        rotated=False; sweeps+=1
        for rnd in range(N-1):
            ps=[];qs=[];cs=[];ss=[];fix=[]
            for k in range(H):
                p = rnd if k==0 else (rnd+k)%(N-1)
                q = N-1 if k==0 else (rnd-k+N-1)%(N-1)
                app,aqq,apq=a[p,p],a[q,q],a[p,q]
                c,s,t=np.float32(1),np.float32(0),np.float32(0)
                if abs(apq)>floor and abs(apq)>1e-7*np.sqrt(abs(app*aqq)):
                    tau=(aqq-app)/(2*apq); t=np.float32((1 if tau>=0 else -1)/(abs(tau)+np.sqrt(1+tau*tau)))
                    c=np.float32(1/np.sqrt(1+t*t)); s=t*c; rotated=True
                ps.append(p);qs.append(q);cs.append(c);ss.append(s);fix.append((t,app-t*apq,aqq+t*apq))
            ps=np.array(ps);qs=np.array(qs);cs=np.array(cs,dtype=np.float32)[:,None];ss=np.array(ss,dtype=np.float32)[:,None]
            ap=a[ps,:].copy();aq=a[qs,:].copy(); a[ps,:]=cs*ap-ss*aq; a[qs,:]=ss*ap+cs*aq
            ap=a[:,ps].copy();aq=a[:,qs].copy(); a[:,ps]=cs.T*ap-ss.T*aq; a[:,qs]=ss.T*ap+cs.T*aq
            vp=v[:,ps].copy();vq=v[:,qs].copy(); v[:,ps]=cs.T*vp-ss.T*vq; v[:,qs]=ss.T*vp+cs.T*vq
            for k,(t,dp,dq) in enumerate(fix):
                if t!=0: p,q=ps[k],qs[k]; a[p,p]=dp;a[q,q]=dq;a[p,q]=0;a[q,p]=0
        if not rotated: break
    d=np.diag(a); order=np.argsort(-d,kind='stable')
    return d[order], v[:,order], sweeps
rng=np.random.default_rng(0)
for n in (64,128):
    for T,noise in ((512,0.05),(1400,0.2),(20,0.05)):
        rank=max(2,n//8)
        z=rng.standard_normal((T,rank))*np.exp(-np.arange(rank)/3)
        K=z@rng.standard_normal((rank,n))+noise*rng.standard_normal((T,n))
        K-=K.mean(0); G=(K.T@K).astype(np.float32)
        e,V,sw=jacobi(G)
        re,RV=np.linalg.eigh(G.astype(np.float64)); re=re[::-1]
        scale=max(abs(re[0]),abs(re[-1]))
        orth=np.abs(V.T.astype(np.float64)@V-np.eye(n)).max()
        res=np.linalg.norm(G@V-V*e)/np.linalg.norm(G)
        print(n,T,'sweeps',sw,'max|de|/scale %.2e'%(np.abs(e-re).max()/scale),'orth %.2e'%orth,'resid %.2e'%res)
